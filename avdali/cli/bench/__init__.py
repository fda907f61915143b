"""``avdali bench shard|loader|train``: throughput measurements, printed (one module per measurement)."""

import typer

from avdali.cli.bench import loaders, packing, training

app = typer.Typer(help="Throughput benchmarks (short runs; figures go into benchmarks/README.md).", no_args_is_help=True)
app.command(name="shard")(packing.shard)
app.command(name="loader")(loaders.loader)
app.command(name="train")(training.train)
