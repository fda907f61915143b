"""The package boundaries README's Development section promises, checked on what Python really loads."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from avdali.cli.common import parse_size
from avdali.errors import AvdaliError


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
