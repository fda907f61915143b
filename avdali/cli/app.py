"""The ``avdali`` command: a typer app with one module per command. Commands stay thin and call the package."""

import typer

app = typer.Typer(
    name="avdali",
    help="High-throughput data loading and training for audio-visual emotion recognition (RAVDESS, MELD).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

# Registration: one line per command module (each module defines `app` or a command function).
from avdali.cli import synth  # noqa: E402
app.add_typer(synth.app, name="synth")
from avdali.cli import train as train_cmd  # noqa: E402
app.command(name="train")(train_cmd.train)
from avdali.cli import shard  # noqa: E402
app.add_typer(shard.app, name="shard")
from avdali.cli import inspect as inspect_cmd  # noqa: E402
app.command(name="inspect")(inspect_cmd.inspect)
from avdali.cli import bench  # noqa: E402
app.add_typer(bench.app, name="bench")
from avdali.cli import eval as eval_cmd  # noqa: E402
app.command(name="eval")(eval_cmd.eval_checkpoint)
from avdali.cli import predict as predict_cmd  # noqa: E402
app.command(name="predict")(predict_cmd.predict)
from avdali.cli import demo as demo_cmd  # noqa: E402
app.command(name="demo")(demo_cmd.demo)
from avdali.cli import cv as cv_cmd  # noqa: E402
app.command(name="cv")(cv_cmd.cv)


def main() -> None:
    app()
