"""Reading and writing RunConfig (the schema is ``config.py``): the TOML reader, the ``--set`` parser, the TOML writer.

Precedence, written down here and nowhere else (``load_config``):

    dataclass defaults  <  TOML file  <  ``--set section.key=value`` overrides (CLI flags become overrides)

Every value is type-checked against its field's annotation before the section's own ``__post_init__`` checks ranges
and choices, so every bad key or value is one ConfigError that names the key (and the file or ``--set`` it came
from) and the valid choices. ``config.toml`` in a run folder is loadable again with ``--config``.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal, Sequence

from avdali.errors import AvdaliError, ConfigError
from avdali.files import atomic_write_text
from avdali.labels import LABEL_SPACES
from avdali.train.config import SECTIONS, DataSection, RunConfig


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> RunConfig:
    """The one place of precedence: dataclass defaults < TOML file at ``path`` < ``overrides``.

    ``overrides`` are ``section.key=value`` strings; values are TOML literals (``3``, ``1e-3``, ``true``,
    ``[1, 2]``, ``"x"``); a value that is not a TOML literal is taken as a bare string (``data.loader=torch``).
    """
    values: dict[str, dict[str, Any]] = {}
    origins: dict[str, str] = {}
    if path is not None:
        path = Path(path)
        values = read_toml(path)
        for section, keys in values.items():
            if isinstance(keys, dict):
                origins.update({f"{section}.{k}": str(path) for k in keys})
        if isinstance(values.get("train", {}), dict):
            values.setdefault("train", {}).setdefault("name", path.stem)
            origins.setdefault("train.name", str(path))
    for text in overrides:
        section, key, value = parse_override(text)
        values.setdefault(section, {})[key] = value
        origins[f"{section}.{key}"] = f"--set {text}"
    return config_from_dict(values, origins)


def read_toml(path: Path) -> dict:
    """Parse a TOML config file (ConfigError naming the file for a missing file or bad TOML)."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file: {e.strerror}") from None


def parse_override(text: str) -> tuple[str, str, Any]:
    """``"optim.lr=1e-3"`` → ``("optim", "lr", 0.001)`` (ConfigError for a malformed override)."""
    dotted, sep, raw = text.partition("=")
    section, dot, key = dotted.strip().partition(".")
    if not sep or not dot or not key or "." in key:
        raise ConfigError(f"--set {text!r}: expected section.key=value, e.g. optim.lr=1e-3")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        # Bare words (data.loader=torch) are meant as strings; quoting them in a shell is a nuisance.
        value = raw
    return section, key, value


def config_from_dict(values: dict, origins: dict[str, str] | None = None) -> RunConfig:
    """Build a RunConfig from nested ``{section: {key: value}}`` (a TOML file's, or ``RunConfig.to_dict``'s).

    Unknown sections and keys, wrong types and bad values raise ConfigError naming the key and where it came from.
    """
    origins = origins or {}
    for section in values:
        if section not in SECTIONS:
            raise ConfigError(f"{_where(origins, section)}unknown section [{section}]; valid sections: {', '.join(SECTIONS)}")
        if not isinstance(values[section], dict):
            raise ConfigError(f"{_where(origins, section)}[{section}] must be a table of key = value")
    built = {}
    for section, cls in SECTIONS.items():
        given = dict(values.get(section, {}))
        if section == "model":
            given = _derive_model_keys(given, built["data"], origins)
        built[section] = _build_section(section, cls, given, origins)
    return RunConfig(**built)


def _derive_model_keys(given: dict, data: DataSection, origins: dict[str, str]) -> dict:
    derived = {"num_classes": len(LABEL_SPACES[data.pipeline.label_space]), "audio_features": data.pipeline.feature_bins}
    for key, value in derived.items():
        if key in given and given[key] != value:
            raise ConfigError(
                f"{_where(origins, f'model.{key}')}model.{key} = {given[key]!r} contradicts [data] "
                f"(label_space {data.pipeline.label_space!r}, feature_bins {data.pipeline.feature_bins}) which gives {value}; leave it out"
            )
        given[key] = value
    return given


def _build_section(section: str, cls: type, given: dict, origins: dict[str, str]):
    flat = cls is DataSection  # [data] is flat in a file: DataSection's keys beside its DataConfig's
    hints = DataSection.flat_hints() if flat else typing.get_type_hints(cls)
    names = DataSection.flat_keys() if flat else [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in given.items():
        dotted = f"{section}.{key}"
        if key not in names:
            raise ConfigError(f"{_where(origins, dotted)}unknown key {dotted}; valid keys of [{section}]: {', '.join(names)}")
        try:
            kwargs[key] = _coerce(dotted, value, hints[key])
        except ConfigError as e:
            raise ConfigError(f"{_where(origins, dotted)}{e}") from None
    try:
        return DataSection.from_flat(kwargs) if flat else cls(**kwargs)
    except AvdaliError as e:
        # The section's own checks name the key; add which file or --set it came from.
        named = [k for k in kwargs if f"{section}.{k}" in str(e)]  # the key the message starts with, if several
        key = min(named, key=lambda k: str(e).index(f"{section}.{k}")) if named else None
        where = _where(origins, f"{section}.{key}") if key else ""
        raise ConfigError(f"{where}{e}") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"[{section}]: {e}") from None


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against a field annotation; return it converted (int → float, list → tuple)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for option in args:
            try:
                return _coerce(key, value, option)
            except ConfigError:
                pass
        raise ConfigError(f"{key} must be {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key} must be one of {', '.join(map(repr, args))}; got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key} must be a list of {len(args)} values, got {list(value)!r}")
            items = [_coerce(key, v, a) for v, a in zip(value, args)]
        else:
            items = [_coerce(key, v, args[0]) for v in value] if args else list(value)
        return tuple(items) if origin is tuple else items
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    return value


def _type_name(hint: Any) -> str:
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))


def _where(origins: dict[str, str], key: str) -> str:
    source = origins.get(key) or next((v for k, v in origins.items() if k.startswith(f"{key}.")), None)
    return f"{source}: " if source else ""


# --- writing -------------------------------------------------------------------------------------------


def config_to_toml(cfg: RunConfig) -> str:
    """The config as TOML text that ``load_config`` reads back to an equal RunConfig."""
    lines = [f"# resolved avdali run config (defaults < file < --set)"]
    for section, keys in cfg.to_dict().items():
        lines.append(f"\n[{section}]")
        lines.extend(f"{key} = {toml_literal(value)}" for key, value in keys.items())
    return "\n".join(lines) + "\n"


def dump_config(cfg: RunConfig, path: str | Path) -> Path:
    """Write ``config_to_toml(cfg)`` to ``path`` (atomically, like checkpoints)."""
    return atomic_write_text(path, config_to_toml(cfg))


def toml_literal(value: Any) -> str:
    """``value`` written as a TOML literal: what config.toml holds, and the one way to quote a ``--set`` value built
    in code (``f"train.run_dir={toml_literal(path)}"``): ``parse_override`` reads it back as ``value``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_literal(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as a TOML value")


_TOML_SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _toml_string(text: str) -> str:
    """A TOML basic string, ASCII only: the bytes JSON would write for the same text (config.toml files written
    before this stay byte-identical), except where JSON is not TOML: DEL escaped, and characters beyond U+FFFF as
    one ``\\UXXXXXXXX`` (TOML refuses JSON's surrogate pairs)."""
    out = []
    for ch in text:
        code = ord(ch)
        if ch in _TOML_SHORT_ESCAPES:
            out.append(_TOML_SHORT_ESCAPES[ch])
        elif code < 0x20 or 0x7F <= code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        elif code > 0xFFFF:
            out.append(f"\\U{code:08x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'
