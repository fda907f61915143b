#!/usr/bin/env python3
"""Check avdali's CUDA paths on a GPU machine, end to end, through the CLI a user runs.

    python tools/gpu_check.py SHARDS OUT [--set section.key=value ...]

SHARDS: a RAVDESS shard folder with all five folds (e.g. `avdali synth ravdess raw --actors 24 --trials 8
--size 320x180 && avdali shard ravdess raw SHARDS`). OUT: where the logs and JSON results go.

Steps (each with its own time limit, so one hang does not hide the rest; the summary says which passed):
0. `avdali doctor --json`: what the machine offers (CUDA, DALI on the GPU, NVDEC) and what is broken; its report is
   the summary's ``doctor`` entry (the steps run either way).
1. `avdali train --config configs/ravdess.toml --gpus 1`: torch.distributed's elastic launcher, NCCL, DDP,
   bf16 autocast, torch.compile (inductor), channels_last, atomic checkpoints, TensorBoard; two short epochs.
2. `avdali eval` of its best.pt on the test fold, on CUDA.
3. `avdali bench train`: clips/s and data-wait share with AMP (bf16/none) × torch.compile (on/off), the
   config's full per-GPU batch (8 clips of 16 frames at 112²).
4. `avdali train --gpus N` with N above the GPU count: must stop with one line before starting ranks.

The torch loader is used throughout (DALI need not be installed); ImageNet weights are off (no download).
Extra ``--set`` values are passed to every command. ``--cpu``: a dry run of the same steps without a GPU
(e.g. `--cpu --set data.frames=4 --set data.crop=64`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

CONFIG = "configs/ravdess.toml"


def run_step(name: str, command: list[str], limit_s: int, out: Path) -> dict:
    """Run one CLI command with a time limit; its output goes to OUT/NAME.log; returns rc and seconds."""
    print(f"== {name}: {' '.join(command)}", flush=True)
    start = time.perf_counter()
    log = out / f"{name}.log"
    with log.open("w") as f:
        try:
            rc = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, timeout=limit_s).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    seconds = round(time.perf_counter() - start, 1)
    tail = log.read_text(errors="replace").splitlines()[-15:]
    print("\n".join("   " + line for line in tail), flush=True)
    print(f"   -> rc={rc} in {seconds} s", flush=True)
    return {"rc": rc, "seconds": seconds}


def doctor_report(avdali: list[str], out: Path) -> dict:
    """``avdali doctor --json`` (written to OUT/doctor.json): rc, seconds and the parsed report."""
    result = run_step("doctor", [*avdali, "doctor", "--json", "--output", str(out)], 180, out)
    text = (out / "doctor.log").read_text(errors="replace")
    try:
        result["report"] = json.JSONDecoder().raw_decode(text[text.index("{"):])[0]  # warnings may follow
    except ValueError as e:  # a crash before the JSON: the log says why
        result["report"] = f"unreadable: {e}"
    (out / "doctor.json").write_text(json.dumps(result["report"], indent=1))
    return result


def tensorboard_tags(run_dir: Path) -> list[str]:
    """Scalar tags of the run's TensorBoard events, read back with TensorBoard's own reader."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        accumulator = EventAccumulator(str(run_dir))
        accumulator.Reload()
        return sorted(accumulator.Tags()["scalars"])
    except Exception as e:  # noqa: BLE001 - a report, not a check: say what went wrong
        return [f"unreadable: {e}"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shards", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--bench-steps", type=int, default=30)
    parser.add_argument("--run-dir", type=Path, help="the training run's folder (default OUT/run; checkpoints are large)")
    parser.add_argument("--cpu", action="store_true", help="dry run without a GPU: 2 gloo CPU ranks instead of --gpus 1")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    from avdali.train.config import toml_literal  # the one way to quote a --set value (TOML, as config files)

    sets = [f"data.shards={toml_literal(str(args.shards))}", 'data.loader="torch"', "data.num_threads=8",
            'model.backbone_weights="none"', *(['train.device="cpu"'] if args.cpu else []), *args.overrides]  # fmt: skip
    set_flags = [flag for value in sets for flag in ("--set", value)]
    run_dir = args.run_dir or args.out / "run"
    avdali = [sys.executable, "-m", "avdali"]
    summary = {"doctor": doctor_report(avdali, args.out)}
    launch = ["--device", "cpu", "--procs", "2"] if args.cpu else ["--gpus", "1"]
    summary["train"] = run_step("train", [*avdali, "train", "--config", CONFIG, *launch, "--run-dir", str(run_dir),
                                          *set_flags, "--set", f"train.epochs={args.epochs}"], 240, args.out)
    summary["tensorboard_tags"] = tensorboard_tags(run_dir)
    summary["eval"] = run_step("eval", [*avdali, "eval", "--checkpoint", str(run_dir / "best.pt"), "--shards",
                                        str(args.shards), "--split", "fold1", "--loader", "torch",
                                        "--json", str(args.out / "eval.json")], 60, args.out)
    summary["bench_train"] = run_step("bench_train", [*avdali, "bench", "train", str(args.shards), "--config", CONFIG,
                                                      "--loaders", "torch", "--steps", str(args.bench_steps), "--warmup", "5",
                                                      *set_flags, "--json", str(args.out / "bench_train.json")], 240, args.out)
    summary["too_many_gpus"] = run_step("too_many_gpus", [*avdali, "train", "--config", CONFIG, "--gpus", "64",
                                                          "--run-dir", str(args.out / "never"), *set_flags], 30, args.out)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
