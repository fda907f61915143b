"""The ``avdali`` command: a typer app with one module per command. Commands stay thin and call the package."""

import os

# Before torch loads (every command imports it lazily): OpenMP threads that spin at barriers lose whole scheduler slices
# whenever another process holds a core — the loader's own decode workers, or any other job on a shared CPU. Measured
# on the 2-core VM (docs/troubleshooting.md, Training): the demo's training 18.8/22.7 clips/s passive against
# 17.9/19.2 spinning, side by side, and ~10x faster passive with one other busy process. A value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import typer  # noqa: E402

from avdali.cli import bench, shard, synth  # noqa: E402
from avdali.cli import cross as cross_cmd  # noqa: E402
from avdali.cli import cv as cv_cmd  # noqa: E402
from avdali.cli import demo as demo_cmd  # noqa: E402
from avdali.cli import doctor as doctor_cmd  # noqa: E402
from avdali.cli import eval as eval_cmd  # noqa: E402
from avdali.cli import inspect as inspect_cmd  # noqa: E402
from avdali.cli import predict as predict_cmd  # noqa: E402
from avdali.cli import train as train_cmd  # noqa: E402

app = typer.Typer(
    name="avdali",
    help="High-throughput data loading and training for audio-visual emotion recognition (RAVDESS, MELD).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

# In the order of the workflow (what `avdali --help` lists): the machine check → data → training → use → the all-in-one
# runs → benchmarks.
app.command(name="doctor")(doctor_cmd.doctor)
app.add_typer(synth.app, name="synth")
app.add_typer(shard.app, name="shard")
app.command(name="inspect")(inspect_cmd.inspect)
app.command(name="train")(train_cmd.train)
app.command(name="eval")(eval_cmd.eval_checkpoint)
app.command(name="predict")(predict_cmd.predict)
app.command(name="cross")(cross_cmd.cross)
app.command(name="cv")(cv_cmd.cv)
app.command(name="demo")(demo_cmd.demo)
app.add_typer(bench.app, name="bench")


def main() -> None:
    app()
