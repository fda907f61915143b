"""What the size of a DALI pipeline run costs: the streaming DALI loader with one batch a run and with runs of several
batches (``order.batches_per_run``), and the decode ceiling at both sizes, measured in turns in one process.

Each round takes ``--clips`` clips from each of the four in turn (the order reversed every other round, a short pause
before each so the last one's runs in flight finish first), timing the wall clock and the process's CPU; the means of
the rounds and the shares of the ceiling at the same run size are printed and written as JSON. On a shared host
(cores stolen by other machines) measuring in turns keeps the ratios honest where one loader after another would
not, and CPU per clip moves far less than clips/s.

    python tools/dali_run_size.py SHARDS --batch-size 8 --rounds 6 --clips 240 --json out.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import numpy as np


def loader_clips(cfg, shardset, frame_size, run_clips: int):
    """Clip counts of the CPU training ``DaliLoader``'s batches, epoch after epoch; and its batches per run."""
    from avdali.data.dali import DaliLoader

    loader = DaliLoader(cfg, shardset, train=True, device="cpu", rank=0, world_size=1, seed=0, frame_size=frame_size,
                        run_clips=run_clips)

    def stream():
        for epoch in itertools.count():
            loader.set_epoch(epoch)
            for batch in loader:
                yield len(batch)

    return stream(), loader.batches_per_run


def ceiling_clips(cfg, shardset, run: int):
    """Clip counts of the decode ceiling's runs of ``run`` clips (``bench loader``'s pipeline)."""
    from avdali.bench.loaders import decode_ceiling_runs

    return (len(out[0]) for out in decode_ceiling_runs(cfg, shardset, run, cfg.num_threads))


def measure(streams: dict, rounds: int, clips: int, pause: float = 0.4) -> dict[str, list[tuple[float, float]]]:
    """(clips/s, CPU ms per clip) of each stream in each round, the streams taking turns."""
    from avdali.bench.loaders import process_tree_cpu_seconds

    for stream in streams.values():  # warm-up: pipelines built, shuffle buffers filled
        for _ in range(4):
            next(stream)
    figures: dict[str, list[tuple[float, float]]] = {name: [] for name in streams}
    for r in range(rounds):
        for name in list(streams) if r % 2 == 0 else list(reversed(streams)):
            time.sleep(pause)
            cpu, start, n = process_tree_cpu_seconds(), time.perf_counter(), 0
            while n < clips:
                n += next(streams[name])
            seconds = time.perf_counter() - start
            figures[name].append((n / seconds, 1000 * (process_tree_cpu_seconds() - cpu) / n))
    return figures


def summary(figures: dict[str, list[tuple[float, float]]], pairs: dict[str, str]) -> dict:
    """Mean clips/s and CPU ms per clip of each, and each loader's share of its ceiling (``pairs``: loader → ceiling)
    by throughput (the mean of the rounds' ratios) and by CPU per clip."""
    out = {name: dict(clips_per_s=round(float(np.mean([f[0] for f in rows])), 1),
                      cpu_ms_per_clip=round(float(np.mean([f[1] for f in rows])), 2)) for name, rows in figures.items()}
    for loader, ceiling in pairs.items():
        ratios = [a[0] / b[0] for a, b in zip(figures[loader], figures[ceiling])]
        out[loader]["share_of_ceiling"] = round(float(np.mean(ratios)), 3)
        spent = out[loader]["cpu_ms_per_clip"]  # 0 when a round is shorter than the clock's tick
        out[loader]["share_by_cpu"] = round(out[ceiling]["cpu_ms_per_clip"] / spent, 3) if spent else None
    return out


def main(argv: list[str] | None = None) -> dict:
    from avdali.data import order
    from avdali.data.build import probe_frame_size
    from avdali.data.config import DataConfig
    from avdali.data.shards import list_splits, resolve

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shards")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--clips", type=int, default=240, help="clips each stream gives per round")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    cfg = DataConfig(shards=args.shards, batch_size=args.batch_size, frames=args.frames, num_threads=args.threads)
    shardset = resolve(args.shards, list(list_splits(args.shards)))
    frame_size = probe_frame_size(shardset)
    one, _ = loader_clips(cfg, shardset, frame_size, run_clips=args.batch_size)
    several, k = loader_clips(cfg, shardset, frame_size, run_clips=order.RUN_CLIPS)
    run = k * args.batch_size
    streams = {"ceiling-1": ceiling_clips(cfg, shardset, args.batch_size), f"ceiling-{k}": ceiling_clips(cfg, shardset, run),
               "loader-1": one, f"loader-{k}": several}
    figures = measure(streams, args.rounds, args.clips)
    result = dict(batch_size=args.batch_size, batches_per_run=k, rounds=args.rounds, clips=args.clips,
                  figures=summary(figures, {"loader-1": "ceiling-1", f"loader-{k}": f"ceiling-{k}"}),
                  rounds_figures={name: [[round(a, 1), round(b, 2)] for a, b in rows] for name, rows in figures.items()})
    for name, f in result["figures"].items():
        print(name, f)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result, out, indent=1)
    return result


if __name__ == "__main__":
    main()
