"""tools/gpu_check.py's bookkeeping (the whole script is dry-run with --cpu by hand: minutes, not a unit test)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def load_tool(name: str):
    """A stand-alone script of tools/ as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tool():
    return load_tool("gpu_check")


def test_steps_record_command_rc_figures_and_skip_past_the_budget(tmp_path):
    tool = _tool()
    figures = tmp_path / "f.json"
    summary = {"machine": {}}
    steps = tool.Steps(tmp_path, budget_s=60, summary=summary)
    code = f"import json; json.dump({{'x': 1}}, open({str(figures)!r}, 'w')); print('done')"
    ok = steps.run("ok", [sys.executable, "-c", code], 30, figures)
    assert ok["rc"] == 0 and ok["figures"] == {"x": 1} and ok["log_tail"] == ["done"]
    assert ok["command"].endswith(code)
    slow = steps.run("slow", [sys.executable, "-c", "import time; time.sleep(10)"], 0.5)
    assert slow["rc"] == "timeout"
    steps.deadline = 0  # the budget is spent: later steps are recorded, not run
    assert steps.run("late", [sys.executable, "-c", "raise SystemExit(3)"], 30)["rc"] == "skipped: time budget spent"
    written = json.loads((tmp_path / "gpu_check.json").read_text())
    assert list(written["steps"]) == ["ok", "slow", "late"] and written["steps"]["ok"]["figures"] == {"x": 1}


def test_machine_names_the_versions():
    info = _tool().machine(cpu=True)
    assert info["torch"] and info["python"] and info["mode"] == "cpu dry run" and "driver" in info


def test_a_timed_out_step_takes_its_children_with_it(tmp_path):
    import os
    import time

    tool = _tool()
    pid_file = tmp_path / "child.pid"
    code = ("import subprocess, sys, time; "
            "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            f"open({str(pid_file)!r}, 'w').write(str(c.pid)); time.sleep(60)")
    step = tool.Steps(tmp_path, budget_s=60, summary={}).run("tree", [sys.executable, "-c", code], 3)
    assert step["rc"] == "timeout"
    child = int(pid_file.read_text())
    for _ in range(50):  # reaped by init once killed
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"child {child} of the timed-out step still runs")
