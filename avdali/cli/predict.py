"""``avdali predict CLIP``: one video file → per-emotion probabilities (rich table, or JSON with ``--json``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from avdali.cli.common import check_choice, console, err_console, user_errors
from avdali.train.config import DEVICE_CHOICES
from avdali.train.modality import MODALITIES


@user_errors
def predict(
    clip: Annotated[Path, typer.Argument(help="A video with an audio track (H.264/AAC mp4 like the datasets', or anything FFmpeg reads); a clip with only one usable stream works with a checkpoint trained with modality dropout.", show_default=False)],
    checkpoint: Annotated[Optional[Path], typer.Option("--checkpoint", "-k", help="Checkpoint to use (default: the newest best.pt anywhere under output/).", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout instead of a table.")] = False,
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda.")] = "auto",
    modality: Annotated[Optional[str], typer.Option("--modality", help="both | audio | video: the streams to use (default: every stream the clip has).", show_default=False)] = None,
    speaker_clips: Annotated[Optional[Path], typer.Option("--speaker-clips", help="A folder of other clips of the same person (any emotion): a checkpoint trained with data.speaker_norm needs them for the speaker's usual face and voice.", show_default=False)] = None,
) -> None:
    """Predict the emotion of one clip: the same face crop, frame sampling and log-mel as training, then the model's
    probabilities per class, most probable first."""
    from avdali.infer.load import load_model, newest_checkpoint
    from avdali.infer.predict import predict_clip

    check_choice("--device", device, DEVICE_CHOICES)
    check_choice("--modality", modality, MODALITIES)
    if checkpoint is None:
        checkpoint = newest_checkpoint()
        err_console.print(f"checkpoint: {escape(str(checkpoint))} (the newest best.pt under output/)", highlight=False, soft_wrap=True)
    with err_console.status(f"loading {checkpoint}"):
        loaded = load_model(checkpoint, device)
    with err_console.status(f"reading {clip}"):
        result = predict_clip(loaded, clip, modality=modality, speaker_clips=speaker_clips)
    if as_json:
        print(json.dumps({**result.to_dict(), "checkpoint": str(checkpoint)}, indent=1))
        return
    used = "audio and video" if result.modality == "both" else f"{result.modality} only"
    if result.missing:
        used += " (" + "; ".join(f"{reason}" for reason in result.missing.values()) + ")"
    table = Table(title=f"{clip.name}: {result.label}", caption=f"from {used}", header_style="bold")
    table.add_column("emotion")
    table.add_column("probability", justify="right")
    table.add_column("")
    for name, p in result.ranked():
        style = "bold green" if name == result.label else ""
        table.add_row(name, f"{p:.3f}", "█" * round(p * 30), style=style)
    console.print(table)
    info = result.clip
    console.print(
        f"{escape(str(clip))}: {info['frames']} frames at {info['fps']:g} fps ({info['duration_s']:.2f} s), "
        f"face {info['face']} · checkpoint {escape(str(checkpoint))} ({loaded.label_space}, epoch {loaded.epoch}) "
        f"· pack options from {escape(result.pack_options['from'])}"
        + (f" · speaker statistics from {result.speaker_clips} clips" if result.speaker_clips else ""),
        style="dim",
        highlight=False,
        soft_wrap=True,
    )
