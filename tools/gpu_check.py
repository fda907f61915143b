#!/usr/bin/env python3
"""Measure avdali on a GPU machine in one go (~8 minutes on one H200 with 16 cores) and write one JSON.

    PYTHONPATH=$PWD/.gpu/site:$PWD python3 tools/gpu_check.py --out OUT [--shards SHARDS] [--budget-s 480]

Without ``--shards`` it first makes small synthetic RAVDESS shards in OUT/data (`avdali synth ravdess` 24 actors ×
``--trials`` clips at 256x144, then `avdali shard ravdess` on every core: well under a minute on 16 cores). Steps,
each a CLI command a user runs, each with its own time limit (and all within ``--budget-s``), so one hang does
not hide the rest:

0. versions: GPU, driver, CUDA, torch, DALI, Python; `avdali doctor --json` (CUDA, DALI on the GPU, NVDEC). A loader
   the doctor finds broken (no DALI, no NVDEC) is left out of the later steps (``loaders`` in the JSON says which ran).
1. `avdali bench loader --device cuda` at batch 64 (with the CPU decode ceiling) and 256: dali-gpu (NVDEC),
   dali-hybrid (CPU decode, GPU ops), dali-cpu, torch workers and the decoded-frame cache in GPU memory (its first
   pass apart): clips/s, frames/s, CPU cores busy, GPU memory.
2. `avdali bench train --config-only --batch-sizes B` for B = 64, 256, 8 (one step each, so a slow one keeps the
   others' figures) with the dali (data.decode = auto) and torch loaders, bf16, torch.compile, channels_last:
   clips/s, data-wait share, step ms, achieved TFLOP/s and MFU (FLOPs by FlopCounterMode); then the DALI loader at
   batch 256 with the decoded-frame cache (data.cache = "device"), and at batch 64 with speaker normalisation.
3. `avdali train --gpus 1` (torchrun, NCCL, DDP, DALI with data.decode = auto) for two short epochs, then
   `avdali eval` of its best.pt on CUDA.
4. `avdali train --gpus 64`: must stop with one line before starting ranks.
The steps run in that order of value (1 and 2 interleaved: b64 loader, train b64, train b256, loader b256, train
b256 with the cache, train b64 with speaker normalisation, train b8); those the budget no longer covers are recorded
as skipped.

OUT/gpu_check.json holds the machine, every step's exact command, exit code, seconds and its figures (the bench
JSONs inlined); it is rewritten after each step, so a run cut short still leaves what it measured. Commit it under
``benchmarks/``. ImageNet weights are off (the machine has no network). ``--cpu``: a dry run of the same steps
without a GPU on tiny settings (CPU loaders, gloo ranks), to check the script itself.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

CONFIG = "configs/ravdess.toml"
CPU_CONFIG = "avdali/configs/demo.toml"
"""``--cpu``: the demo's narrow model at 8 frames of 64² (the RAVDESS model would take the dry run's whole budget on a
2-core VM)."""
FOLDS = ["fold1", "fold2", "fold3", "fold4", "fold5"]


class Steps:
    """Runs CLI steps within one time budget and keeps the summary JSON current."""

    def __init__(self, out: Path, budget_s: float, summary: dict):
        self.started = time.monotonic()
        self.out, self.deadline, self.summary = out, self.started + budget_s, summary
        self.summary["steps"] = {}

    def run(self, name: str, command: list[str], limit_s: float, json_file: Path | None = None) -> dict:
        """Run ``command`` (output to OUT/NAME.log) for at most ``limit_s`` and what is left of the budget."""
        left = self.deadline - time.monotonic()
        step = {"command": " ".join(command), "limit_s": round(min(limit_s, max(left, 0)), 1)}
        self.summary["steps"][name] = step
        if left < 5:
            step["rc"] = "skipped: time budget spent"
            self.write()
            return step
        print(f"== {name}: {step['command']}", flush=True)
        start = time.perf_counter()
        log = self.out / f"{name}.log"
        with log.open("w") as f:
            # its own process group: on timeout the whole tree goes (torchrun's ranks, DataLoader workers), so no
            # orphan keeps the GPU or the cores busy during the next step
            process = subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                step["rc"] = process.wait(timeout=step["limit_s"])
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                step["rc"] = "timeout"
        step["seconds"] = round(time.perf_counter() - start, 1)
        tail = log.read_text(errors="replace").splitlines()[-12:]
        step["log_tail"] = tail
        print("\n".join("   " + line for line in tail), flush=True)
        print(f"   -> rc={step['rc']} in {step['seconds']} s", flush=True)
        if json_file is not None and json_file.is_file():
            step["figures"] = json.loads(json_file.read_text())
        self.write()
        return step

    def write(self) -> None:
        self.summary["elapsed_s"] = round(time.monotonic() - self.started, 1)
        (self.out / "gpu_check.json").write_text(json.dumps(self.summary, indent=1) + "\n")


def machine(cpu: bool) -> dict:
    """GPU, driver, CUDA, torch, DALI and Python versions (what the figures depend on)."""
    from importlib import metadata

    info = {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
            "utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    for package in ("torch", "nvidia-dali-cuda130", "nvidia-dali-cuda120", "av", "webdataset", "soundfile"):
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    try:
        import torch

        info["cuda_runtime"] = torch.version.cuda
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name()
            info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 1024**3, 1)
    except Exception as e:  # noqa: BLE001 - a report, not a check: say what went wrong
        info["torch_error"] = str(e)
    try:
        from avdali.machine.doctor import driver_version

        info["driver"] = driver_version()
    except Exception as e:  # noqa: BLE001
        info["driver"] = f"unknown: {e}"
    info["mode"] = "cpu dry run" if cpu else "cuda"
    return info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_check_out"), help="logs, shards and gpu_check.json")
    parser.add_argument("--shards", type=Path, help="a RAVDESS shard folder with all five folds (default: synthesise one)")
    parser.add_argument("--trials", type=int, default=32, help="synthetic clips per actor (24 actors)")
    parser.add_argument("--budget-s", type=float, default=500, help="wall-clock budget for all steps")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra config override, every run")
    parser.add_argument("--cpu", action="store_true", help="dry run without a GPU on tiny settings")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    avdali = [sys.executable, "-m", "avdali"]
    summary = {"machine": machine(args.cpu), "argv": sys.argv}
    steps = Steps(out, args.budget_s, summary)
    cores = os.cpu_count() or 1

    shards = args.shards
    if shards is None:
        shards = out / "data" / "shards"
        trials = 2 if args.cpu else args.trials
        if not (shards / "manifest.json").is_file():
            steps.run("synth", [*avdali, "synth", "ravdess", str(out / "data" / "raw"), "--actors", "24", "--trials",
                                str(trials), "--size", "256x144", "-j", str(cores)], 120)
            steps.run("shard", [*avdali, "shard", "ravdess", str(out / "data" / "raw"), str(shards), "--workers", str(cores)], 120)
    summary["shards"] = str(shards)

    # every fold trains (the synthetic set is small: batch 256 still gets a few steps per epoch); fold1 validates
    config = CPU_CONFIG if args.cpu else CONFIG
    tiny = ["data.frames=4"] if args.cpu else []
    from avdali.train.config_toml import toml_literal  # the one way to quote a --set value (TOML, as config files)

    sets = [f"data.shards={toml_literal(str(shards))}", 'model.backbone_weights="none"', f"data.num_threads={cores}",
            f"data.train_splits={toml_literal(FOLDS)}", 'data.val_splits=["fold1"]', *tiny,
            *(['train.device="cpu"'] if args.cpu else ['train.amp="bf16"', "train.compile=true", "train.channels_last=true"]),
            *args.overrides]  # fmt: skip
    set_flags = [flag for value in sets for flag in ("--set", value)]

    doctor = steps.run("doctor", [*avdali, "doctor", "--json", "--output", str(out)], 60)
    log = (out / "doctor.log").read_text(errors="replace") if (out / "doctor.log").is_file() else ""
    try:
        doctor["figures"] = json.JSONDecoder().raw_decode(log[log.index("{"):])[0]  # warnings may follow
    except ValueError as e:
        doctor["figures"] = f"unreadable: {e}"
    steps.write()
    works = {c.get("name"): c.get("status") == "ok" for c in doctor["figures"].get("checks", [])} if isinstance(
        doctor["figures"], dict) else {}
    # a loader the doctor found broken would fail its whole bench step: leave it out and say so in the JSON (a check
    # the doctor did not report counts as working: try it)
    dali = works.get("dali", True) and (args.cpu or works.get("dali-gpu", True))
    nvdec = works.get("nvdec", True)
    cuda_loaders = [name for name, ok in (("dali-gpu", dali and nvdec), ("dali-hybrid", dali), ("dali-cpu", dali),
                                          ("torch", True), ("cache", dali)) if ok]
    train_loaders = "dali,torch" if dali else "torch"
    summary["loaders"] = {"bench_loader": cuda_loaders, "bench_train": train_loaders}

    def bench_loader(batch: int, count: int, warmup: int, ceiling: bool, limit: int) -> None:
        device = ["--device", "cpu", "--loaders", "dali,torch,cache" if dali else "torch"] if args.cpu else [
            "--device", "cuda", "--loaders", ",".join(cuda_loaders)]
        figures = out / f"bench_loader_b{batch}.json"
        steps.run(f"bench_loader_b{batch}", [
            *avdali, "bench", "loader", str(shards), *device, "--batch-size", str(batch), "--batches", str(count),
            "--warmup", str(warmup), "--frames", "4" if args.cpu else "16", *([] if ceiling else ["--no-ceiling"]),
            "--json", str(figures)], limit, figures)  # fmt: skip

    def bench_train(batch: int, limit: int, variant: str = "", loaders: str = train_loaders, extra=()) -> None:
        name = f"bench_train{variant}_b{batch}"
        figures = out / f"{name}.json"
        steps.run(name, [
            *avdali, "bench", "train", str(shards), "--config", config, "--loaders", loaders, "--config-only",
            "--batch-sizes", str(batch), "--steps", "3" if args.cpu else "10", "--warmup", "1" if args.cpu else "3",
            *set_flags, *[flag for value in extra for flag in ("--set", value)], "--json", str(figures)],
            limit, figures)  # fmt: skip

    # most valuable first: when the budget runs out, the later (cheaper to redo, or already checked) steps are skipped
    cache = ['data.cache="host"' if args.cpu else 'data.cache="device"']
    if args.cpu:
        bench_loader(4, 3, 1, True, 60)
        bench_train(2, 120)
        bench_train(4, 120)
        if dali:
            bench_train(4, 90, "_cache", "dali", cache)
            bench_train(2, 90, "_speaker_norm", "dali", ["data.speaker_norm=true"])
    else:
        bench_loader(64, 12, 3, True, 75)
        bench_train(64, 90)
        bench_train(256, 90)
        bench_loader(256, 8, 2, False, 75)
        if dali:
            bench_train(256, 75, "_cache", "dali", cache)
            bench_train(64, 60, "_speaker_norm", "dali", ["data.speaker_norm=true"])
        bench_train(8, 75)

    run_dir = out / "run"
    launch = ["--device", "cpu", "--procs", "2"] if args.cpu else ["--gpus", "1"]
    steps.run("train", [*avdali, "train", "--config", config, *launch, "--run-dir", str(run_dir), *set_flags,
                        "--set", "train.epochs=2", "--set", f'data.loader="{"dali" if dali else "torch"}"',
                        "--set", 'data.decode="auto"'], 240 if args.cpu else 120)
    figures = out / "eval.json"
    steps.run("eval", [*avdali, "eval", "--checkpoint", str(run_dir / "best.pt"), "--shards", str(shards), "--split",
                       "fold1", "--json", str(figures)], 45, figures)
    steps.run("too_many_gpus", [*avdali, "train", "--config", config, "--gpus", "64", "--run-dir", str(out / "never"),
                                *set_flags], 30)
    summary["total_s"] = round(time.monotonic() - steps.started, 1)
    steps.write()
    print(f"wrote {out / 'gpu_check.json'} in {summary['total_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
