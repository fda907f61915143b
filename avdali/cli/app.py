"""The ``avdali`` command: a typer app with one module per command. Commands stay thin and call the package."""

import typer

from avdali.cli import bench, shard, synth
from avdali.cli import cross as cross_cmd
from avdali.cli import cv as cv_cmd
from avdali.cli import demo as demo_cmd
from avdali.cli import doctor as doctor_cmd
from avdali.cli import eval as eval_cmd
from avdali.cli import inspect as inspect_cmd
from avdali.cli import predict as predict_cmd
from avdali.cli import train as train_cmd

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
