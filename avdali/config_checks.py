"""The value checks every config section runs in its ``__post_init__`` (``[data]``, ``[model]``, ``[optim]``,
``[train]``): one set, one message style, ``<key> must be <rule>, got <value>``, naming the key as a config file
writes it (``data.crop``, ``optim.lr``). Each raises ``ConfigError``."""

from __future__ import annotations

import math
from typing import Any, Sequence

from avdali.errors import ConfigError


def choice(key: str, value: Any, choices: Sequence[str]) -> None:
    """``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def number(key: str, value: Any) -> None:
    """``value`` is an int or a float (not a bool, not NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigError(f"{key} must be a number, got {value!r}")


def positive(key: str, value: Any) -> None:
    """``value`` is a number > 0."""
    number(key, value)
    if value <= 0:
        raise ConfigError(f"{key} must be > 0, got {value!r}")


def at_least(key: str, value: Any, minimum: float) -> None:
    """``value`` is a number ≥ ``minimum``."""
    number(key, value)
    if value < minimum:
        raise ConfigError(f"{key} must be ≥ {minimum}, got {value!r}")


def in_unit(key: str, value: Any) -> None:
    """``value`` is a number in [0, 1)."""
    number(key, value)
    if not 0 <= value < 1:
        raise ConfigError(f"{key} must be in [0, 1), got {value!r}")


def integer_at_least(key: str, value: Any, minimum: int) -> None:
    """``value`` is an int ≥ ``minimum`` (bool is an int subclass; ``true`` in a TOML file is never a meant size)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key} must be an integer ≥ {minimum}, got {value!r}")


def even(key: str, value: int, why: str) -> None:
    """``value`` is even; ``why`` says what needs it."""
    if value % 2:
        raise ConfigError(f"{key} must be even ({why}), got {value}")


def divides(key: str, value: int, other_key: str, other: int) -> None:
    """``value`` divides ``other`` (the value of ``other_key``)."""
    if other % value:
        raise ConfigError(f"{key} must divide {other_key} ({other}), got {value}")
