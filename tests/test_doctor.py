"""``avdali doctor``: every check that can run on a CPU machine runs and passes here; a broken required part
exits 1 with the fix on its line; missing GPU parts are skipped (exit 0)."""

from __future__ import annotations

import dataclasses
import json
from collections import namedtuple

import pytest
from typer.testing import CliRunner

from avdali.machine import doctor, libraries
from avdali.cli.app import app

runner = CliRunner()
CPU_CHECKS = {"python", "packages", *libraries.PARTS, "cpu", "disk-shards", "disk-output"}
GPU_CHECKS = {"cuda", "dali-gpu", "nvdec"}


@pytest.fixture(autouse=True)
def fresh_probes():
    libraries.forget()
    yield
    libraries.forget()


def doctor_json(tmp_path, *extra):
    result = runner.invoke(app, ["doctor", "--json", "--shards", str(tmp_path / "shards"),
                                 "--output", str(tmp_path / "output"), *extra])
    return result, json.loads(result.stdout)


def test_doctor_passes_on_this_machine(tmp_path):
    import torch

    result, report = doctor_json(tmp_path)
    checks = {c["name"]: c for c in report["checks"]}
    assert result.exit_code == 0 and report["ok"] is True
    assert set(checks) == CPU_CHECKS | GPU_CHECKS
    for name in CPU_CHECKS - {"packages"}:  # packages is skipped when avdali runs from a source tree
        assert checks[name]["status"] == "ok", checks[name]
    assert checks["packages"]["status"] in ("ok", "skip")
    assert all(not checks[name]["required"] for name in GPU_CHECKS)
    if not torch.cuda.is_available():
        assert checks["dali-gpu"]["status"] == checks["nvdec"]["status"] == "skip"
        assert "no CUDA device" in checks["nvdec"]["detail"]
    assert str(tmp_path / "shards") in checks["disk-shards"]["detail"]


def test_lines_mark_each_check(tmp_path):
    result = runner.invoke(app, ["doctor", "--shards", str(tmp_path), "--output", str(tmp_path)])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert len(lines) == len(CPU_CHECKS | GPU_CHECKS) + 1 and lines[-1] == "avdali doctor: ready"
    assert all(line[0] in "✓–" for line in lines[:-1])


def test_broken_native_part_fails_with_its_fix(tmp_path, monkeypatch):
    def broken():
        raise OSError("libtorchaudio.so: undefined symbol: torch_exception_get_what_without_backtrace")

    monkeypatch.setitem(libraries.PARTS, "torchaudio", dataclasses.replace(libraries.PARTS["torchaudio"], probe=broken))
    result, report = doctor_json(tmp_path)
    check = next(c for c in report["checks"] if c["name"] == "torchaudio")
    assert result.exit_code == 1 and report["ok"] is False
    assert check["status"] == "fail" and "undefined symbol" in check["detail"] and "pip install" in check["fix"]
    text = runner.invoke(app, ["doctor", "--shards", str(tmp_path), "--output", str(tmp_path)]).output
    assert any(line.startswith("✗ torchaudio") and "→ pip install" in line for line in text.splitlines())


def test_full_disk_and_old_python_fail(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(doctor.shutil, "disk_usage", lambda path: usage(10**12, 10**12 - 10**8, 10**8))
    result, report = doctor_json(tmp_path)
    checks = {c["name"]: c for c in report["checks"]}
    assert result.exit_code == 1
    assert checks["disk-output"]["status"] == "fail" and "0.1 GiB free" in checks["disk-output"]["detail"]
    old = doctor.check_python((3, 10, 14))
    assert old.status == "fail" and "needs ≥ 3.11" in old.detail
    assert "untested" in doctor.check_python((3, 13, 0)).detail


def test_package_outside_the_tested_range_fails(monkeypatch):
    real = doctor.metadata.version
    monkeypatch.setattr(doctor.metadata, "requires", lambda name: ["torchaudio==2.11.0", "pytest>=8; extra == \"test\""])
    monkeypatch.setattr(doctor.metadata, "version", lambda name: "2.11.1" if name == "torchaudio" else real(name))
    check = doctor.check_packages()
    assert check.status == "fail" and "torchaudio 2.11.1 (tested: ==2.11.0)" in check.detail


def test_a_broken_optional_gpu_part_keeps_exit_zero(tmp_path, monkeypatch):
    monkeypatch.setattr(doctor, "check_nvdec", lambda: doctor.Check("nvdec", "fail", "libnvcuvid.so.1 does not load",
                                                                    doctor.NVDEC_HIDDEN_FIX, required=False))
    result, report = doctor_json(tmp_path)
    assert result.exit_code == 0 and report["ok"] is True
    assert next(c for c in report["checks"] if c["name"] == "nvdec")["status"] == "fail"


def test_a_crashing_check_is_a_failed_line(tmp_path, monkeypatch):
    monkeypatch.setattr(doctor, "check_cores", lambda: 1 / 0)
    result, report = doctor_json(tmp_path)
    check = next(c for c in report["checks"] if c["name"] == "cpu")
    assert result.exit_code == 1 and check["status"] == "fail" and "ZeroDivisionError" in check["detail"]


DOCKER_VIDEO = """docker run --gpus 'all,"capabilities=compute,utility,video"'"""
"""Docker's own quoting: without the inner double quotes it splits the value on its commas."""


def fake_nvcuvid(monkeypatch, loads: bool) -> None:
    """A GPU machine as far as ``check_nvdec`` asks, whose ``libnvcuvid.so.1`` loads or not."""
    import ctypes

    real = ctypes.CDLL

    def cdll(name, *args, **kwargs):
        if name != "libnvcuvid.so.1":
            return real(name, *args, **kwargs)
        if not loads:
            raise OSError("libnvcuvid.so.1: cannot open shared object file: No such file or directory")
        return object()

    monkeypatch.setattr(doctor, "cuda_devices", lambda: 1)
    monkeypatch.setattr(ctypes, "CDLL", cdll)


def test_nvdec_hidden_gives_the_container_advice(monkeypatch):
    fake_nvcuvid(monkeypatch, loads=False)
    with pytest.raises(libraries.NvcuvidMissing, match="^libnvcuvid.so.1 does not load"):
        libraries.probe_nvdec(0)
    check = doctor.check_nvdec()
    assert check.status == "fail" and not check.required
    assert check.detail.startswith("libnvcuvid.so.1 does not load (libnvcuvid.so.1: cannot open")
    assert check.fix == doctor.NVDEC_HIDDEN_FIX
    assert DOCKER_VIDEO in check.fix and "NVIDIA_DRIVER_CAPABILITIES=compute,utility,video" in check.fix
    assert 'data.decode = "cpu"' in check.fix


@pytest.mark.parametrize("failure", ["decode", "wrong frames"])
def test_nvdec_decode_failure_gets_its_own_fix(failure, monkeypatch):
    """libnvcuvid loads, then the probe's decode fails or returns other frames: no container setting helps, so the fix
    says to decode on the CPU instead."""
    import numpy as np

    from avdali.data import dali

    def probe_video_decode(encoded, device_id=0):
        if failure == "decode":
            raise RuntimeError("Critical error in pipeline: CUDA_ERROR_NO_DEVICE")
        return np.zeros((8, 128, 128, 3), np.uint8)

    fake_nvcuvid(monkeypatch, loads=True)
    monkeypatch.setattr(dali, "probe_video_decode", probe_video_decode)
    check = doctor.check_nvdec()
    expected = {"decode": "DALI mixed VP9 decode: RuntimeError: Critical error in pipeline: CUDA_ERROR_NO_DEVICE",
                "wrong frames": "DALI mixed decode differs from the clip by"}[failure]
    assert check.status == "fail" and check.detail.startswith(expected), check.detail
    assert check.fix == doctor.NVDEC_DECODE_FIX and 'data.decode = "cpu"' in check.fix
    assert "capabilities" not in check.fix and "docker" not in check.fix.lower()
