"""The package boundaries of docs/architecture.md, checked on the source (every import, those inside functions too,
read with ``ast``) and on what Python really loads."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from avdali.cli.common import parse_size
from avdali.errors import AvdaliError

PACKAGE = Path(__file__).resolve().parents[1] / "avdali"
MAX_LINES = 450
MAX_CLI_LINES = 200
MAX_TRAIN_LINES = 2600
OVER_LIMIT: dict[str, str] = {}
"""Modules allowed over ``MAX_LINES`` for now, with the reason (the test fails when one no longer needs it)."""


def _modules() -> dict[str, Path]:
    """Dotted name → file of every avdali module."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _imports(name: str) -> set[str]:
    """Every module ``name`` imports anywhere in its file (top level, functions, branches), as dotted names;
    ``from pkg import mod`` counts as ``pkg.mod`` when that is a module."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES)
    return found


IMPORTS = {name: _imports(name) for name in MODULES}


def _internal(name: str) -> set[str]:
    """The avdali modules ``name`` imports (a package import counts as its ``__init__``)."""
    return {m for m in IMPORTS[name] if m in MODULES and m != name}


def _in(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def test_no_module_is_over_its_line_limit():
    sizes = {str(path.relative_to(PACKAGE)): len(path.read_text().splitlines()) for path in MODULES.values()}
    over = {f: n for f, n in sizes.items() if n > (MAX_CLI_LINES if f.startswith("cli/") else MAX_LINES)}
    assert set(over) == set(OVER_LIMIT), f"modules over the limit: {over} (allowed for now: {sorted(OVER_LIMIT)})"
    train = sum(n for f, n in sizes.items() if f.startswith("train/"))
    assert train <= MAX_TRAIN_LINES, f"avdali/train/ holds {train} lines (at most {MAX_TRAIN_LINES}: the run only)"


def test_no_import_circle_between_avdali_modules():
    """Imports inside functions count: a circle hidden in a function is still a circle."""
    graph = {name: _internal(name) for name in MODULES}
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                pytest.fail("import circle: " + " → ".join(path[path.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


RULES = [
    # (packages, imports they must not make, why)
    (("avdali.sources", "avdali.packing", "avdali.shardformat"), ("torch", "torchaudio", "torchvision"),
     "packing and reading raw trees run without torch"),
    (("avdali.models",), ("avdali.data", "nvidia"), "the model takes tensors, not loaders"),
    (("avdali.data",), ("avdali.train", "avdali.packing", "avdali.sources", "avdali.infer", "avdali.experiments",
                        "avdali.bench", "avdali.cli"), "data reads shards only"),
    (("avdali.train",), ("avdali.infer", "avdali.experiments", "avdali.bench", "avdali.cli"),
     "train holds the run; what uses a checkpoint, experiments and benchmarks sit above it"),
    (("avdali.infer",), ("avdali.experiments", "avdali.bench", "avdali.cli"), "using a checkpoint needs no experiment"),
    (("avdali.experiments", "avdali.bench"), ("avdali.cli",), "only the CLI knows the terminal"),
]


@pytest.mark.parametrize("packages, forbidden, why", RULES, ids=[r[0][0] for r in RULES])
def test_package_rules(packages, forbidden, why):
    broken = {name: sorted(m for m in IMPORTS[name] if _in(m, forbidden))
              for name in MODULES if _in(name, packages)}
    assert not {k: v for k, v in broken.items() if v}, why


def test_only_cli_knows_terminals_and_exit_codes():
    """typer and rich are imported by cli alone, and only cli ends the process with an exit code. (A torch DataLoader
    worker's ``os._exit`` when the training process is gone is a worker's end, not the command's exit code.)"""
    terminal = {name: sorted(m for m in IMPORTS[name] if _in(m, ("typer", "rich", "click")))
                for name in MODULES if not _in(name, ("avdali.cli",))}
    assert not {k: v for k, v in terminal.items() if v}
    exits = []
    for name, path in MODULES.items():
        if _in(name, ("avdali.cli", "avdali.__main__")):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "exit" and getattr(node.value, "id", "") == "sys":
                exits.append(name)
            if isinstance(node, ast.Name) and node.id == "SystemExit":
                exits.append(name)
    assert not exits


def test_dali_is_imported_in_one_package_of_data():
    importers = sorted(name for name in MODULES if any(_in(m, ("nvidia.dali",)) for m in IMPORTS[name]))
    assert importers and all(_in(name, ("avdali.data.dali",)) for name in importers), importers
    # and so the torch loader works where DALI is not installed
    loaded = _loaded_after("import avdali.data.build, avdali.data.torch_loader, avdali.infer.predict, avdali.train.run")
    assert not {m for m in loaded if m.startswith("nvidia.dali")}


def test_packing_sources_and_the_format_load_no_torch():
    loaded = _loaded_after("import avdali.packing.run, avdali.packing.transcode, avdali.packing.workers, "
                           "avdali.sources, avdali.shardformat.inspect, avdali.synth.ravdess, avdali.synth.meld")
    assert "torch" not in loaded


def _loaded_after(imports: str) -> set[str]:
    """Module names loaded by a fresh interpreter after ``imports`` (a fresh one: this one has loaded everything)."""
    code = f"import sys\n{imports}\nprint('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_readers_reach_the_format_without_packing_and_the_format_without_torch():
    loaded = _loaded_after(
        "import avdali.shardformat.inspect, avdali.shardformat.index, avdali.files\n"
        "assert 'torch' not in sys.modules, 'shardformat loaded torch'\n"
        "import avdali.data.build, avdali.data.torch_loader, avdali.infer.clip_batch, avdali.data.integrity, "
        "avdali.train.plan, avdali.infer.load, avdali.train.evaluate"
    )
    assert "avdali.shardformat.manifest" in loaded  # the readers do read the format …
    assert not {m for m in loaded if m.startswith("avdali.packing")}  # … through shardformat, not through packing


@pytest.mark.parametrize("text, size", [("1280x720", (1280, 720)), (" 64 X 48 ", (64, 48))])
def test_parse_size_reads_width_x_height(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["-2x4", "1x", "axb", "12x12x3", "1.5x2"])
def test_parse_size_refuses_anything_else_in_one_line(text):
    with pytest.raises(AvdaliError, match=r"^--size must look like 1280x720, got "):
        parse_size(text)


def test_parse_size_minimum():
    assert parse_size("64x64", minimum=64) == (64, 64)
    with pytest.raises(AvdaliError, match=r"^--size 32x64 is too small \(at least 64x64\)$"):
        parse_size("32x64", minimum=64)


def test_cli_makes_openmp_wait_passively_unless_the_user_chose():
    """``avdali`` sets OMP_WAIT_POLICY=PASSIVE before torch loads (spinning OpenMP threads collapse on a shared CPU),
    and keeps a value the user set."""
    # What Python runs before app.py's first line (the packages' __init__) must not load torch: it reads the value once.
    code = ("import os, sys, avdali, avdali.cli; early = 'torch' in sys.modules; import avdali.cli.app; "
            "print(os.environ['OMP_WAIT_POLICY'], early)")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["PASSIVE", "False"]
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split()[0] == "ACTIVE"
