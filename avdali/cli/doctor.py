"""``avdali doctor``: one line per check of this machine (Python, packages, native libraries, disk, GPU)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from avdali.cli.common import console

MARKS = {"ok": "[green]✓[/]", "fail": "[red]✗[/]", "skip": "[dim]–[/]"}


def doctor(
    shards: Annotated[Path, typer.Option("--shards", help="Where shards go (free disk is checked there).")] = Path("shards"),
    output: Annotated[Path, typer.Option("--output", help="Where runs go (free disk is checked there).")] = Path("output"),
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON instead of lines.")] = False,
) -> None:
    """Check whether this machine can run avdali, and say how to fix what cannot.

    Exit code 1 when a required part is broken; 0 when only the optional GPU parts are missing or broken.
    """
    from avdali.machine.doctor import run_checks

    report = run_checks(shards=shards, output=output)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=1))
    else:
        width = max(len(c.name) for c in report.checks)
        for c in report.checks:
            optional = "" if c.required or c.status == "skip" else " [dim](optional)[/]"
            fix = f" [yellow]→ {escape(c.fix)}[/]" if c.status == "fail" and c.fix else ""
            console.print(f"{MARKS[c.status]} {c.name:<{width}}  {escape(c.detail)}{optional}{fix}", highlight=False,
                          soft_wrap=True)
        verdict = "[green]ready[/]" if report.ok else "[red]not ready: fix the ✗ lines above[/]"
        console.print(f"avdali doctor: {verdict}", highlight=False)
    if not report.ok:
        raise typer.Exit(1)
