"""What every command shares: one console, turning AvdaliError into a one-line error + exit code, option parsing."""

from __future__ import annotations

import functools
import sys

import typer
from rich.console import Console
from rich.markup import escape

from avdali.errors import AvdaliError

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``error: message`` on stderr and return the Exit to raise."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def check_choice(option: str, value: str | None, choices: tuple[str, ...]) -> None:
    """A CLI option's value against the choices its config module defines (None: not given, fine)."""
    if value is not None and value not in choices:
        raise AvdaliError(f"{option} must be one of {', '.join(choices)}, got {value!r}")


def user_errors(fn):
    """Decorator for command functions: AvdaliError → one red line on stderr, exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except AvdaliError as e:
            raise fail(str(e)) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]")
            sys.exit(130)

    return wrapper


def parse_size(text: str, minimum: int = 1) -> tuple[int, int]:
    """``--size WIDTHxHEIGHT`` → (width, height). The rule: two whole numbers in decimal digits (no sign) joined by one
    ``x`` or ``X``, spaces around each number allowed, both at least ``minimum``; anything else is a one-line error."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise AvdaliError(f"--size must look like 1280x720, got {text!r}")
    width, height = int(parts[0]), int(parts[1])
    if width < minimum or height < minimum:
        raise AvdaliError(f"--size {text} is too small (at least {minimum}x{minimum})")
    return width, height
