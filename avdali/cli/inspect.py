"""``avdali inspect OUT``: re-check a shard folder against its manifest and decode a few clips."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from avdali import labels
from avdali.cli.common import console, err_console, fail, user_errors
from avdali.shardformat.inspect import inspect_shards


def label_table(report) -> Table:
    """Samples per split × unified label, counted from the tars."""
    manifest = report.manifest
    table = Table(title=f"{manifest.dataset}: {manifest.samples} samples in {len(manifest.shards)} shards", header_style="bold")
    table.add_column("split")
    for name in labels.UNIFIED:
        table.add_column(name, justify="right")
    table.add_column("total", justify="right")
    totals = dict.fromkeys(labels.UNIFIED, 0)
    for split in sorted(report.labels):
        counts = report.labels[split]
        for name in labels.UNIFIED:
            totals[name] += counts.get(name, 0)
        table.add_row(split, *(str(counts.get(n, 0)) for n in labels.UNIFIED), str(sum(counts.values())))
    table.add_row("[bold]all[/]", *(f"[bold]{totals[n]}[/]" for n in labels.UNIFIED), f"[bold]{sum(totals.values())}[/]")
    return table


def order_line(manifest) -> str:
    """The folder's format and how its clips are ordered: file-name order (formats 1 and 2), or shuffled with the
    recorded seed (a missing one read as the default, as a resume reads it)."""
    if manifest.format_version < 3:
        return f"format {manifest.format_version}: each split's clips in file-name order (re-pack to shuffle them)"
    return f"format {manifest.format_version}: each split's clips shuffled with --seed {manifest.options.get('shuffle_seed', 0)}"


@user_errors
def inspect(
    out: Annotated[Path, typer.Argument(help="A shard folder written by `avdali shard` (holds manifest.json).")],
    decode: Annotated[int, typer.Option("--decode", min=0, help="Clips per split to decode (webm + flac) and compare with meta.i32.")] = 3,
) -> None:
    """Check every shard against manifest.json (sha256, sample keys and counts, .idx vs tar, labels),
    decode a few clips per split, and print samples per split × label. Exit 1 on any mismatch."""
    with err_console.status("checking shards") as status:
        report = inspect_shards(out, decode_per_split=decode, progress=lambda name: status.update(f"checking {name}"))
    console.print(label_table(report))
    manifest = report.manifest
    faces = manifest.faces
    console.print(
        f"faces detected {faces.get('detected', 0)}, centre crop {faces.get('centre', 0)}"
        f"{', placeholder picture ' + str(faces['none']) if faces.get('none') else ''}; "
        f"{len(manifest.skipped)} sources skipped when packing; {report.decoded} clips decoded",
        highlight=False,
        soft_wrap=True,
    )
    console.print(order_line(manifest), highlight=False, soft_wrap=True)
    if manifest.partial:
        from avdali.cli.pack_summary import partial_line

        console.print(partial_line(manifest), highlight=False, soft_wrap=True)
        for kind, keys in manifest.partial_keys.items():
            if keys:
                console.print(f"  {kind}: {escape(', '.join(keys))}", highlight=False, soft_wrap=True)
    if not report.ok:
        for problem in report.problems:
            err_console.print(f"[red]mismatch[/] {escape(problem)}", highlight=False, soft_wrap=True)
        raise fail(f"{out}: {len(report.problems)} problem(s) found")
    console.print(f"[green]ok[/] {escape(str(out))}: every shard matches the manifest", soft_wrap=True)
