"""``avdali doctor``'s checks: can this machine run avdali, and what to do when it cannot.

Each check returns a ``Check`` (ok / fail / skip, a detail, the fix). Required checks (Python, packages, the
native pieces, disk) decide the exit code; the GPU checks (CUDA, DALI on the GPU, NVDEC) are optional: a CPU
machine is a supported machine, and they are skipped there with "no CUDA device".
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable

from avdali.machine import libraries

TESTED_PYTHONS = ((3, 11), (3, 12))
"""Python versions the test suite ran on (3.11: CPU CI machine; 3.12: the GPU machine)."""
MIN_FREE_BYTES = 2 * 1024**3
"""Less free space than this where shards or runs go fails the check (a RAVDESS shard set is ~1 GiB)."""
REINSTALL = "pip install -e . (in the avdali checkout) installs the tested versions"
NVDEC_HIDDEN_FIX = (
    "the driver's video decode library is hidden or missing: in a container grant the driver's video capability "
    "(docker run --gpus 'all,\"capabilities=compute,utility,video\"', quoted exactly so, or Docker splits it on the "
    "commas; or NVIDIA_DRIVER_CAPABILITIES=compute,utility,video); outside one, install the driver's libnvcuvid "
    "(Ubuntu: libnvidia-decode-VERSION). Meanwhile set data.decode = \"cpu\" (\"auto\" chooses it here)"
)
"""The fix when ``libnvcuvid.so.1`` does not load."""
NVDEC_DECODE_FIX = (
    "libnvcuvid loads but NVDEC failed the probe (its error is on this line): set data.decode = \"cpu\" (DALI decodes "
    "video on its CPU threads, the rest stays on the GPU; \"auto\" chooses it here); if dali-gpu passes, report the "
    "error with the output of `avdali doctor --json`"
)
"""The fix for any other NVDEC probe failure (the decode fails or gives wrong frames): no container setting helps."""


@dataclass
class Check:
    """One line of the doctor's report."""

    name: str
    status: str
    """``ok``, ``fail`` or ``skip``."""
    detail: str
    fix: str = ""
    required: bool = True
    """A failing required check makes ``avdali doctor`` exit 1; optional ones (GPU) do not."""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Report:
    checks: list[Check]

    @property
    def ok(self) -> bool:
        """No required check failed."""
        return not any(c.status == "fail" and c.required for c in self.checks)

    def to_dict(self) -> dict:
        return {"ok": self.ok, "checks": [c.to_dict() for c in self.checks]}


def _guarded(name: str, required: bool, fn: Callable[[], Check]) -> Check:
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - a check that crashes is a failed check, never a doctor traceback
        return Check(name, "fail", libraries.reason(e), "report this with the output of `avdali doctor --json`", required)


# --- Python and packages --------------------------------------------------------------------------------


def check_python(version_info: tuple = sys.version_info) -> Check:
    version = tuple(version_info[:2])
    tested = ", ".join(f"{a}.{b}" for a, b in TESTED_PYTHONS)
    text = f"{version[0]}.{version[1]}.{version_info[2]} ({sys.executable})"
    if version < (3, 11):
        return Check("python", "fail", f"{text}: avdali needs ≥ 3.11", f"use Python {tested}")
    note = "" if version in TESTED_PYTHONS else f"; untested (tested: {tested})"
    return Check("python", "ok", text + note)


def check_packages() -> Check:
    """Every installed dependency against avdali's declared pins and ranges (the tested versions)."""
    from packaging.requirements import Requirement

    try:
        declared = metadata.requires("avdali") or []
    except metadata.PackageNotFoundError:
        return Check("packages", "skip", "avdali is not installed (running from a source tree)", REINSTALL)
    wrong = []
    count = 0
    for line in declared:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue  # optional extras (test)
        count += 1
        try:
            have = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            wrong.append(f"{req.name} missing (wants {req.specifier})")
            continue
        if req.specifier and not req.specifier.contains(have, prereleases=True):
            wrong.append(f"{req.name} {have} (tested: {req.specifier})")
    if wrong:
        return Check("packages", "fail", "; ".join(wrong), REINSTALL)
    return Check("packages", "ok", f"{count} dependencies at tested versions (torch {libraries.version_of('torch')})")


def check_native(name: str) -> Check:
    part = libraries.PARTS[name]
    works, detail = libraries.check(name)
    version = libraries.version_of(part.package)
    if works:
        return Check(name, "ok", f"{part.package} {version}: {detail}")
    return Check(name, "fail", f"{part.package} {version}: {detail}",
                 f"pip install -e . (tested versions); if it persists, pip install --force-reinstall {part.package}")


# --- machine ----------------------------------------------------------------------------------------------


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def check_cores() -> Check:
    cores = usable_cores()
    return Check("cpu", "ok", f"{cores} usable cores (shard -j 0 and the loaders' threads use them)")


def _existing(path: Path) -> Path:
    path = path.resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk(name: str, folder: Path) -> Check:
    where = _existing(Path(folder))
    free = shutil.disk_usage(where).free
    text = f"{folder}: {free / 1024**3:.1f} GiB free on {where}"
    if not os.access(where, os.W_OK):
        return Check(name, "fail", f"{folder}: {where} is not writable", f"choose a writable folder for {name}")
    if free < MIN_FREE_BYTES:
        return Check(name, "fail", text + f" (< {MIN_FREE_BYTES // 1024**3} GiB)", f"free space or put {name} elsewhere")
    return Check(name, "ok", text)


# --- GPU (optional) --------------------------------------------------------------------------------------


def driver_version() -> str:
    """The NVIDIA driver's version (nvidia-smi), else the CUDA API version libcuda reports, else ``""``."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=20)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip().splitlines()[0]
        except (OSError, subprocess.TimeoutExpired):
            pass
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return ""
    version = ctypes.c_int()
    if libcuda.cuDriverGetVersion(ctypes.byref(version)) != 0:
        return ""
    return f"CUDA {version.value // 1000}.{version.value % 1000 // 10}"


def cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_cuda() -> Check:
    import torch

    driver = driver_version()
    if not torch.cuda.is_available():
        if not driver:
            return Check("cuda", "skip", "no CUDA device (no NVIDIA driver): avdali runs on the CPU", required=False)
        return Check("cuda", "fail", f"driver {driver} present, but torch {torch.__version__} sees no CUDA device",
                     "check CUDA_VISIBLE_DEVICES and that the driver supports torch's CUDA "
                     f"{torch.version.cuda} (nvidia-smi)", required=False)
    names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    return Check("cuda", "ok", f"{torch.cuda.device_count()} device(s): {names}; driver {driver or '?'}; "
                 f"torch {torch.__version__} (CUDA {torch.version.cuda})", required=False)


def check_dali_gpu() -> Check:
    if not cuda_devices():
        return Check("dali-gpu", "skip", "no CUDA device", required=False)
    from avdali.data.dali import probe_pipeline

    try:
        probe_pipeline(0)
    except Exception as e:  # noqa: BLE001 - the failure is the finding
        return Check("dali-gpu", "fail", libraries.reason(e),
                     "DALI's CUDA build must match the driver: pip install -e . (nvidia-dali-cuda130 needs a CUDA 13 driver)",
                     required=False)
    return Check("dali-gpu", "ok", "gpu pipeline runs on device 0", required=False)


def check_nvdec() -> Check:
    if not cuda_devices():
        return Check("nvdec", "skip", "no CUDA device", required=False)
    try:
        detail = libraries.probe_nvdec(0)
    except Exception as e:  # noqa: BLE001 - the failure is the finding
        # only a library that does not load is the container's doing; a decode that fails needs another fix
        fix = NVDEC_HIDDEN_FIX if isinstance(e, libraries.NvcuvidMissing) else NVDEC_DECODE_FIX
        return Check("nvdec", "fail", str(e) if isinstance(e, RuntimeError) else libraries.reason(e), fix, required=False)
    return Check("nvdec", "ok", detail, required=False)


def run_checks(shards: Path = Path("shards"), output: Path = Path("output")) -> Report:
    """Every check, in the order they are printed."""
    planned: list[tuple[str, bool, Callable[[], Check]]] = [
        ("python", True, check_python),
        ("packages", True, check_packages),
        *((name, True, lambda name=name: check_native(name)) for name in libraries.PARTS),
        ("cpu", True, check_cores),
        ("disk-shards", True, lambda: check_disk("disk-shards", shards)),
        ("disk-output", True, lambda: check_disk("disk-output", output)),
        ("cuda", False, check_cuda),
        ("dali-gpu", False, check_dali_gpu),
        ("nvdec", False, check_nvdec),
    ]
    return Report([_guarded(name, required, fn) for name, required, fn in planned])
