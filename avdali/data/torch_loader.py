"""The PyTorch baseline loader: webdataset → PyAV + soundfile + torchaudio in DataLoader workers.

It reads what the DALI pipeline reads (the clip specification, ``clipspec.py``, through the per-clip kernel
``decode.py``; the sample order of ``order.py``), and it is the fallback where DALI is not installed (nothing here
imports DALI). What makes it a fair baseline:

- workers are started with ``forkserver`` (audio libraries are not fork-safe) and stay alive across epochs;
  each runs one decoder thread and one torch thread, so N workers use N cores without oversubscription;
- a rank reads only the tars of its part of the epoch's order (``order.rank_epoch``), and its workers split those
  tars between them (webdataset's ``split_by_worker``), so every tar is read once whatever the worker count;
- PyAV decodes only up to the last needed frame and converts only the needed frames to RGB;
- uint8 pixels cross the worker queues (4× smaller than float32); batches are pinned when going to CUDA;
- batching happens in the workers; the main process only merges the few partial batches at the end of an
  epoch and pads the last one so that every rank yields ``len()`` batches (padding has ``valid=False``).
"""

from __future__ import annotations

import functools
import multiprocessing as mp
import os
import random
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from avdali import shardformat as fmt
from avdali.data import order
from avdali.data.batch import Batch
from avdali.data.config import DataConfig
from avdali.data.decode import AudioFeatures, decode_clip, describe
from avdali.data.integrity import changed_shards, read_failure
from avdali.data.shards import ShardSet
from avdali.errors import AvdaliError

START_METHOD = "forkserver"
"""Worker start method: fork is unsafe with audio/codec libraries that start threads (STYLE.md)."""


def _seed(*parts: int) -> int:
    return hash(parts) & 0x7FFF_FFFF


class ClipStream(IterableDataset):
    """One rank's samples of an epoch (``order.rank_epoch``), its tars split over the DataLoader workers, decoded and
    batched in the workers."""

    def __init__(self, cfg: DataConfig, shardset: ShardSet, *, train: bool, rank: int, world_size: int, seed: int, epoch):
        self.cfg, self.shardset, self.train = cfg, shardset, train
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.epoch = epoch  # a shared multiprocessing Value: persistent workers see set_epoch
        self._features = None

    def parts(self, epoch: int) -> list[order.RankPart]:
        """What this rank reads in ``epoch``."""
        return order.rank_epoch(self.shardset, self.rank, self.world_size, train=self.train, seed=self.seed,
                                epoch=epoch)

    def __iter__(self):
        info = get_worker_info()
        worker = info.id if info else 0
        epoch = self.epoch.value
        parts = self.parts(epoch)
        index = {(p.span.tar, key): p.span.first + j for p in parts for j, key in enumerate(p.span.keys) if p.lo <= j < p.hi}
        rng = np.random.default_rng([self.seed, self.rank, epoch, worker])
        stages = [
            wds.SimpleShardList([p.span.tar for p in parts]),
            wds.split_by_worker,  # each worker reads whole tars of its own
            wds.tarfile_to_samples(),
            wds.select(lambda s: (s["__url__"], s["__key__"]) in index),
        ]
        if self.train:
            buffer = self.cfg.shuffle_buffer
            stages.append(wds.shuffle(buffer, initial=buffer, rng=random.Random(_seed(self.seed, self.rank, epoch, worker))))
        augment = rng if self.train and self.cfg.augment else None
        stages += [
            wds.map(lambda s: dict(self.decode(s, augment), index=index[(s["__url__"], s["__key__"])])),
            wds.batched(self.cfg.batch_size, collation_fn=_collate, partial=True),
        ]
        yield from wds.DataPipeline(*stages)

    def decode(self, sample: dict, rng: np.random.Generator | None) -> dict:
        """One tar sample → tensors (``decode.decode_clip``)."""
        if self._features is None:
            self._features = AudioFeatures(self.cfg)
        source = f"{sample['__url__']}:{sample['__key__']}"
        return decode_clip(sample[fmt.VIDEO_EXT], sample[fmt.AUDIO_EXT], sample[fmt.NUMS_EXT], self.cfg, rng, source,
                           self._features)


def _one_line(error: BaseException) -> str:
    """An AvdaliError raised in a DataLoader worker arrives with the worker's traceback in its text: keep its message."""
    lines = [ln for ln in describe(error).splitlines() if ln.strip()]
    last = lines[-1] if lines else ""
    prefix = "avdali.errors.AvdaliError: "
    return last[len(prefix):] if last.startswith(prefix) else last


def _collate(samples: list[dict]) -> dict:
    return dict(
        video=torch.stack([s["video"] for s in samples]),
        audio=torch.stack([s["audio"] for s in samples]),
        audio_len=torch.tensor([s["audio_len"] for s in samples], dtype=torch.int64),
        label=torch.tensor([s["label"] for s in samples], dtype=torch.int64),
        index=torch.tensor([s["index"] for s in samples], dtype=torch.int64),
        valid=torch.ones(len(samples), dtype=torch.bool),
        audio_present=torch.tensor([s["audio_present"] for s in samples], dtype=torch.bool),
        video_present=torch.tensor([s["video_present"] for s in samples], dtype=torch.bool),
        crop_box=torch.tensor([s["crop_box"] for s in samples], dtype=torch.int32),
        flipped=torch.tensor([s["flipped"] for s in samples], dtype=torch.bool),
    )


OWNER_CHECK_S = 1.0
"""How often a worker checks that the process owning its DataLoader still lives."""


def _worker_init(owner_pid: int, _worker_id: int) -> None:
    torch.set_num_threads(1)  # one core per worker; intra-op threads would fight the other workers
    cv2.setNumThreads(1)
    threading.Thread(target=_exit_with_owner, args=(owner_pid,), name="avdali-owner-watch", daemon=True).start()


def _exit_with_owner(owner_pid: int) -> None:
    """End this worker once its owner is gone. Workers are forked by the forkserver, so torch's own watchdog (the
    parent pid) watches the forkserver, and the forkserver lives as long as any of its workers: after a SIGKILL of
    the training process both would otherwise stay behind forever."""
    while True:
        time.sleep(OWNER_CHECK_S)
        if not _alive(owner_pid):
            os._exit(1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed process stays a zombie until its parent reaps it: that is gone too
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc (macOS): os.kill said it exists


def _cat(parts: list[dict]) -> dict:
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def _take(batch: dict, lo: int, hi: int) -> dict:
    return {k: v[lo:hi] for k, v in batch.items()}


def _invalid(batch: dict, rows: int) -> dict:
    """``rows`` copies of ``batch``'s last row, marked invalid (padding)."""
    filler = {k: v[-1:].expand(rows, *v.shape[1:]) for k, v in batch.items()}
    filler["valid"] = torch.zeros(rows, dtype=torch.bool)
    return filler


def _pad(batch: dict, size: int) -> dict:
    """``batch`` filled up to ``size`` rows with invalid copies of its last row."""
    missing = size - len(batch["label"])
    return _cat([batch, _invalid(batch, missing)]) if missing > 0 else batch


class TorchLoader:
    """Batches from the DataLoader workers: ``len()`` batches per epoch on every rank."""

    def __init__(self, cfg: DataConfig, shardset: ShardSet, *, train: bool, device: str, rank: int, world_size: int,
                 seed: int):
        self.cfg, self.train, self.device, self.world_size = cfg, train, device, world_size
        self.num_samples = shardset.num_samples
        self.shardset = shardset
        ctx = mp.get_context(START_METHOD)
        self._epoch = ctx.Value("i", 0)
        self.dataset = ClipStream(cfg, shardset, train=train, rank=rank, world_size=world_size, seed=seed,
                                  epoch=self._epoch)
        self.workers = min(cfg.num_threads, len(shardset.files))  # a worker reads whole tars
        self.dataloader = DataLoader(
            self.dataset,
            batch_size=None,  # the workers batch
            num_workers=self.workers,
            multiprocessing_context=ctx,
            worker_init_fn=functools.partial(_worker_init, os.getpid()),
            persistent_workers=True,
            prefetch_factor=cfg.prefetch,
            pin_memory=device == "cuda",
        )

    def __len__(self) -> int:
        return order.batches_per_epoch(self.num_samples, self.cfg.batch_size, self.world_size)

    def set_epoch(self, epoch: int) -> None:
        """Training: the epoch's tars for this rank (``order.rank_epoch``), shuffled with seeds of (seed, rank,
        epoch, worker)."""
        self._epoch.value = epoch

    def __iter__(self):
        target = torch.device(f"cuda:{torch.cuda.current_device()}") if self.device == "cuda" else None
        size = self.cfg.batch_size
        emitted = 0
        pending: list[dict] = []
        last = None
        for part in self._parts():
            last = part
            if not pending and len(part["label"]) == size:  # the common case: a full worker batch
                yield self._batch(part, target)
                emitted += 1
                continue
            pending.append(part)
            merged = _cat(pending)
            while len(merged["label"]) >= size:
                yield self._batch(_take(merged, 0, size), target)
                emitted += 1
                merged = _take(merged, size, len(merged["label"]))
            pending = [merged] if len(merged["label"]) else []
        if last is None:
            raise AvdaliError("the torch loader read no samples for this rank")
        if pending:
            yield self._batch(_pad(pending[0], size), target)
            emitted += 1
        while emitted < len(self):  # a rank with fewer samples pads with whole invalid batches
            yield self._batch({k: v.clone() for k, v in _invalid(last, size).items()}, target)
            emitted += 1

    def _parts(self):
        """The workers' batches; a failed read becomes one line naming the shard (the changed one, when a SHA-256
        check finds it), not a worker traceback. Other errors (bugs) pass through unchanged."""
        try:
            yield from self.dataloader
        except Exception as e:
            detail = _one_line(e)
            tars = [p.span.tar for p in self.dataset.parts(self._epoch.value)]
            if changed_shards(self.shardset, tars):  # hashes only now, after a failure
                raise read_failure(self.shardset, tars, "torch", detail) from None
            if isinstance(e, AvdaliError):
                raise AvdaliError(detail) from None
            raise

    @staticmethod
    def _batch(part: dict, target: torch.device | None) -> Batch:
        batch = Batch(**part)
        return batch.to(target) if target is not None else batch
