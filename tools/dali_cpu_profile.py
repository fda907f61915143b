"""Where the streaming DALI pipeline's CPU time goes: CPU milliseconds per clip of each part of the training graph.

Each row is a pipeline built from the streaming graph's own sub-graphs (``avdali.data.dali.graph``) on the same
shards and threads as ``avdali bench loader``, run alone, at the DALI loader's run size (``order.batches_per_run``
batches a run, as the loader and the decode ceiling run):

- ``read``: the webdataset reader (shuffled, as in training);
- ``decode``: + the video decoder on ``decode_plan``'s frames (the decode ceiling's work);
- ``frames``: + ``sequence_rearrange`` (the T frames in order);
- ``crop-nearest`` / ``crop-linear``: + the training window and ``crop_frames`` with that ``crop_interp``;
- ``audio-decode``: the reader and the FLAC decode alone (what the audio costs before its window and features);
- ``audio``: the reader, the audio window and its features, no video;
- ``whole``: ``av_pipeline`` with training's crop in the graph (what the GPU pipeline runs, here on the CPU);
- ``loader``: ``DaliLoader`` on the CPU, training: its graph (no crop) and the crop in torch after it (``crop.py``).

``torch-bilinear`` is not DALI: torch's uint8 bilinear resize of the same windows (``clipspec.draw_crop_box``) on
one thread, what the host crop costs. ``bound`` is ``decode / loader``: the share of the decode ceiling the CPU loader
reaches when the cores are busy with its work alone (``decode / whole`` would be that of the in-graph crop).
``limit`` is ``decode / (decode + audio + torch-bilinear)``: the share it could reach if nothing but the clip
specification's own work cost anything (no batch glue, no pipeline per epoch, threads never idle).

    python tools/dali_cpu_profile.py SHARDS --batch 8 --frames 16 --crop 112 --threads 2 --json out.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import numpy as np

STAGES = ("read", "decode", "frames", "crop-nearest", "crop-linear", "audio-decode", "audio", "whole", "loader")


def cpu_seconds() -> float:
    """This process's user + system CPU seconds, every thread (DALI's threads run in it)."""
    return time.process_time()


def stage_pipeline(stage: str, cfg, shardset, frame_size: tuple[int, int]):
    """The pipeline of one row (defined, not built)."""
    from nvidia.dali import fn, pipeline_def

    from avdali.data import clipspec
    from avdali.data.dali import graph
    from avdali.data.dali.runs import info_length

    paths, index_paths = [f.tar for f in shardset.files], [f.idx for f in shardset.files]
    batch = dict(batch_size=cfg.batch_size, num_threads=cfg.num_threads, device_id=None, seed=1,
                 prefetch_queue_depth=cfg.prefetch)
    if stage == "whole":
        return graph.av_pipeline(paths=paths, index_paths=index_paths, cfg=cfg, device="cpu", train=True, shard_id=0,
                                 num_shards=1, frame_size=frame_size, info_len=info_length(shardset), **batch)

    @pipeline_def(enable_conditionals=False)
    def part():
        webm, flac, meta = graph.read_samples(paths=paths, index_paths=index_paths, train=True, shard_id=0,
                                              num_shards=1, shuffle_buffer=cfg.shuffle_buffer)
        if stage == "read":
            return meta
        if stage == "audio-decode":
            return graph.decode_audio(flac)
        if stage == "audio":
            audio, _valid = graph.audio_window(flac, clipspec.window_samples(cfg.audio_seconds),
                                               fn.random.uniform(range=[0.0, 1.0]))
            return graph.audio_features(audio, cfg, gpu=False)
        u = fn.random.uniform(range=[0.0, 1.0], shape=[cfg.frames])
        if stage == "decode":
            picks, _positions = graph.decode_plan(clipspec.frame_indices(meta[0], cfg.frames, u, graph.GRAPH_OPS),
                                                  meta[0], cfg.frames)
            return fn.decoders.video(webm, frames=picks, pad_mode="none")
        video = graph.video_frames(webm, meta[0], cfg.frames, u, gpu=False, decode="cpu")
        if stage == "frames":
            return video
        interp = stage.split("-")[1]
        roi, box, flip = graph.training_window(frame_size)
        return graph.crop_frames(video, dataclasses.replace(cfg, crop_interp=interp), frame_size, roi), box, flip

    return part(**batch)


def time_stage(pipe, batches: int, warmup: int) -> tuple[float, float, tuple]:
    """(CPU ms per batch, wall ms per batch, shape of the first output's first sample) over ``batches`` runs."""
    pipe.build()
    for _ in range(warmup):
        out = pipe.run()
    c0, t0 = cpu_seconds(), time.perf_counter()
    for _ in range(batches):
        out = pipe.run()
    cpu, wall = cpu_seconds() - c0, time.perf_counter() - t0
    return 1000 * cpu / batches, 1000 * wall / batches, tuple(np.asarray(out[0][0]).shape)


def time_loader(cfg, shardset, frame_size: tuple[int, int], batches: int, warmup: int) -> tuple[float, float, tuple]:
    """``time_stage`` of the CPU ``DaliLoader`` in training (epoch after epoch until ``batches`` are read)."""
    from avdali.data.dali import DaliLoader

    loader = DaliLoader(cfg, shardset, train=True, device="cpu", rank=0, world_size=1, seed=1, frame_size=frame_size)

    def stream():
        for epoch in range(10**6):
            loader.set_epoch(epoch)
            yield from loader

    batch_stream = stream()
    for _ in range(warmup):
        batch = next(batch_stream)
    c0, t0 = cpu_seconds(), time.perf_counter()
    for _ in range(batches):
        batch = next(batch_stream)
    cpu, wall = cpu_seconds() - c0, time.perf_counter() - t0
    return 1000 * cpu / batches, 1000 * wall / batches, tuple(batch.video[0].permute(0, 2, 3, 1).shape)


def torch_bilinear_ms(cfg, frame_size: tuple[int, int], clips: int, seed: int = 0) -> float:
    """CPU ms per clip of the loaders' torch crop (``crop.resized_crop``, bilinear, unflipped: torch's uint8 kernel)
    of ``clips`` training windows, one thread."""
    import torch

    from avdali.data import clipspec, crop

    linear = dataclasses.replace(cfg, crop_interp="linear")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rng = np.random.default_rng(seed)
        height, width = frame_size
        frames = torch.randint(0, 256, (cfg.frames, height, width, 3), dtype=torch.uint8).permute(0, 3, 1, 2)
        boxes = clipspec.draw_crop_boxes(clips, height, width, rng)
        c0 = cpu_seconds()
        for box in boxes:  # T,C,H,W channels-last frames, as the loaders hand them over; the loaders' own crop
            crop.resized_crop(frames, box, False, linear)
        return 1000 * (cpu_seconds() - c0) / clips
    finally:
        torch.set_num_threads(threads)


def profile(cfg, splits: list[str], batches: int = 40, warmup: int = 4, stages=STAGES) -> dict:
    """Every row's CPU and wall ms per clip, on ``splits`` of ``cfg.shards``."""
    from avdali.data import order
    from avdali.data.shards import probe_frame_size, resolve

    shardset = resolve(cfg.shards, splits)
    frame_size = probe_frame_size(shardset)
    k = order.epoch_batches_per_run(shardset.num_samples, cfg.batch_size, 1)
    run_cfg = dataclasses.replace(cfg, batch_size=k * cfg.batch_size)
    rows = {}
    for stage in stages:
        if stage == "loader":  # per batch the loader hands over
            (cpu, wall, shape), clips = time_loader(cfg, shardset, frame_size, batches, warmup), cfg.batch_size
        else:  # per pipeline run, as many clips as ``batches`` batches
            pipe = stage_pipeline(stage, run_cfg, shardset, frame_size)
            (cpu, wall, shape), clips = time_stage(pipe, -(-batches // k), -(-warmup // k)), run_cfg.batch_size
        rows[stage] = {"cpu_ms_per_clip": round(cpu / clips, 3), "wall_ms_per_clip": round(wall / clips, 3),
                       "sample_shape": list(shape)}
    rows["torch-bilinear"] = {"cpu_ms_per_clip": round(torch_bilinear_ms(cfg, frame_size, batches * cfg.batch_size), 3)}
    out = {"rows": rows, "frame_size": list(frame_size), "cores": os.cpu_count(), "batches_per_run": k,
           "config": {k: getattr(cfg, k) for k in ("batch_size", "frames", "crop", "num_threads", "n_mels",
                                                   "audio_seconds", "shuffle_buffer")}}
    if "decode" in rows and "loader" in rows:
        out["bound"] = bound(rows)
    if "decode" in rows and "audio" in rows:
        out["limit"] = limit(rows)
    return out


def bound(rows: dict) -> float:
    """decode / loader CPU ms per clip."""
    return round(rows["decode"]["cpu_ms_per_clip"] / rows["loader"]["cpu_ms_per_clip"], 3)


def limit(rows: dict) -> float:
    """decode / (decode + audio + torch-bilinear) CPU ms per clip."""
    decode = rows["decode"]["cpu_ms_per_clip"]
    work = decode + rows["audio"]["cpu_ms_per_clip"] + rows["torch-bilinear"]["cpu_ms_per_clip"]
    return round(decode / work, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shards")
    parser.add_argument("--splits", default="", help="comma-separated (default: every split)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--crop", type=int, default=112)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n-mels", type=int, default=64)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3, help="runs of every row; the lowest CPU figure is kept")
    parser.add_argument("--json", default="")
    args = parser.parse_args()

    from avdali.data.config import DataConfig
    from avdali.data.shards import list_splits

    cfg = DataConfig(shards=args.shards, batch_size=args.batch, frames=args.frames, crop=args.crop,
                     num_threads=args.threads, n_mels=args.n_mels, verify=False)
    splits = args.splits.split(",") if args.splits else sorted(list_splits(args.shards))
    runs = [profile(cfg, splits, batches=args.batches) for _ in range(args.repeats)]
    result = runs[0]
    for name in result["rows"]:  # the quietest of the repeats, per row
        result["rows"][name] = min((r["rows"][name] for r in runs), key=lambda row: row["cpu_ms_per_clip"])
    result["bound"], result["limit"] = bound(result["rows"]), limit(result["rows"])
    result["repeats"] = args.repeats
    for name, row in result["rows"].items():
        print(f"{name:15s} {row['cpu_ms_per_clip']:7.2f} CPU ms/clip")
    print(f"decode / loader = {result['bound']:.2f}")
    print(f"decode / (decode + audio + torch-bilinear) = {result['limit']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
