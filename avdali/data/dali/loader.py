"""``DaliLoader``: a rank's batches of the streaming DALI pipeline, one pipeline per training epoch (its file list is
the epoch's order), each run of the pipeline holding one or more batches (``order.batches_per_run``), with read
failures named by shard and sample."""

from __future__ import annotations

import numpy as np
import torch

from avdali import shardformat as fmt
from avdali.data import crop, order
from avdali.data.batch import Batch
from avdali.data.config import DataConfig, resolve_decode
from avdali.data.dali.graph import OUTPUTS, av_pipeline, eval_crop
from avdali.data.dali.runs import PipelineRuns, info_length, offset_lookup, pipeline_seed, source_index
from avdali.data.integrity import changed_shards, frame_count_mismatch, read_failure
from avdali.data.shards import ShardSet
from avdali.errors import AvdaliError


_OUT_OF_RANGE = "out-of-bounds frame index"
"""What DALI's decoder says when a frame index is past the stored video (``pad_mode="none"``)."""


class DaliLoader:
    """Batches from the DALI pipeline: ``len()`` batches per epoch on every rank; ``set_epoch`` picks the epoch's
    order (training)."""

    def __init__(
        self,
        cfg: DataConfig,
        shardset: ShardSet,
        *,
        train: bool,
        device: str,
        rank: int,
        world_size: int,
        seed: int,
        frame_size: tuple[int, int],
        run_clips: int = order.RUN_CLIPS,
    ):
        self.cfg, self.shardset, self.train = cfg, shardset, train
        self.device, self.rank, self.world_size, self.seed = device, rank, world_size, seed
        self.frame_size = frame_size
        self.decode = "cpu" if device != "cuda" else resolve_decode(cfg.decode)
        """Where video is decoded: ``cpu`` (CPU pipeline, or the hybrid on CUDA) or ``gpu`` (NVDEC)."""
        self.num_samples = shardset.num_samples
        lo, hi = order.rank_range(self.num_samples, rank, world_size)
        self.rank_samples = hi - lo
        self.batches_per_run = order.epoch_batches_per_run(self.num_samples, cfg.batch_size, world_size, run_clips)
        """Batches each pipeline run holds: its batch is ``batches_per_run × batch_size`` clips."""
        self.epoch = 0
        self._runs_now: PipelineRuns | None = None
        self._next: tuple[int, PipelineRuns] | None = None  # the next training epoch's pipeline, built ahead
        self._info_len = info_length(shardset)
        self._lookup = offset_lookup(shardset.files)
        self._keys = {f.first + j: (f.tar, key) for f in shardset.files for j, key in enumerate(f.keys)}
        jitter = train and cfg.augment
        self.host_crop = jitter and crop.crops_on_host(device)
        """Training's crop runs after the graph, in torch (``crop.py``): on every device but CUDA."""
        self._names = OUTPUTS if jitter and not self.host_crop else OUTPUTS[:-2]
        self._eval_crop = None if jitter else torch.tensor([eval_crop(frame_size, cfg.crop)], dtype=torch.int32)

    def __len__(self) -> int:
        return order.batches_per_epoch(self.num_samples, self.cfg.batch_size, self.world_size)

    @property
    def runs_per_epoch(self) -> int:
        """Pipeline runs per epoch (``len()`` batches, ``batches_per_run`` at a time)."""
        return len(self) // self.batches_per_run

    @property
    def depth(self) -> int:
        """Runs prepared ahead: ``data.prefetch``, at most an epoch's."""
        return min(self.cfg.prefetch, self.runs_per_epoch)

    def set_epoch(self, epoch: int) -> None:
        """Training: the next iteration reads ``epoch``'s order with ``epoch``'s seed; evaluation is the same every
        epoch."""
        self.epoch = epoch

    def files(self, epoch: int | None = None) -> tuple:
        """The tars in the order ``epoch`` (default: the current one) reads them (``order.reading_order``)."""
        epoch = self.epoch if epoch is None else epoch
        return order.reading_order(self.shardset, train=self.train, seed=self.seed, epoch=epoch)

    def rank_tars(self) -> list[str]:
        """The tars this rank reads in the current epoch."""
        return [p.span.tar for p in order.rank_parts(self.files(), self.rank, self.world_size)]

    def make_pipeline(self, device_id: int | None, epoch: int | None = None):
        """The pipeline object for this rank and ``epoch`` (default: the current one; defined, not built)."""
        epoch = self.epoch if epoch is None else epoch
        files = self.files(epoch)
        return av_pipeline(
            paths=[f.tar for f in files],
            index_paths=[f.idx for f in files],
            cfg=self.cfg,
            device="gpu" if self.device == "cuda" else "cpu",
            train=self.train,
            shard_id=self.rank,
            num_shards=self.world_size,
            frame_size=self.frame_size,
            info_len=self._info_len,
            decode=self.decode,
            host_crop=self.host_crop,
            batch_size=self.cfg.batch_size * self.batches_per_run,
            num_threads=self.cfg.num_threads,
            device_id=device_id,
            seed=pipeline_seed(self.seed, self.rank, epoch if self.train else 0),
            prefetch_queue_depth=self.depth,
        )

    def _runs(self, epoch: int, start: bool = False) -> PipelineRuns:
        """A built pipeline for ``epoch`` (with ``start``: already decoding its first batches)."""
        device_id = torch.cuda.current_device() if self.device == "cuda" else None
        runs = PipelineRuns(self.make_pipeline(device_id, epoch), self.depth)
        if start:
            runs._schedule(None)
        return runs

    def _ensure_runs(self) -> PipelineRuns:
        # Evaluation keeps one pipeline for every epoch. Training reads each epoch from its own pipeline (its file
        # list is the epoch's order): the next epoch's is built while this epoch's last batches are read, so its
        # first batches are decoded by then; any other jump (the first epoch, a resume) builds it now.
        if self._runs_now is not None and not self.train:
            return self._runs_now
        self._runs_now = None  # release the old pipeline's threads before starting new ones
        prepared, self._next = self._next, None
        if prepared is not None and prepared[0] == self.epoch:
            self._runs_now = prepared[1]
        else:
            del prepared
            self._runs_now = self._runs(self.epoch)
        return self._runs_now

    def _index_of(self, info: torch.Tensor) -> torch.Tensor:
        return torch.tensor([source_index(row, self._lookup) for row in info.cpu().numpy()], dtype=torch.int64)

    def __iter__(self):
        target = torch.device(f"cuda:{torch.cuda.current_device()}") if self.device == "cuda" else torch.device("cpu")
        position = 0
        finished = False
        # the host crop's windows and flips: one stream per (seed, rank, epoch), drawn in batch order
        windows = np.random.default_rng([self.seed, self.rank, self.epoch, 0x637270]) if self.host_crop else None  # "crp"
        # from this batch on (the current pipeline has scheduled its last run), the next epoch's pipeline decodes too
        ahead = max(self.runs_per_epoch - self.depth, 0) * self.batches_per_run
        try:
            for step, outputs in enumerate(self._outputs()):
                if self.train and step == ahead and self._next is None:
                    self._next = (self.epoch + 1, self._runs(self.epoch + 1, start=True))
                yield self._batch(outputs, position, target, windows)
                position += self.cfg.batch_size
            finished = True
        finally:
            if not finished or self.train:  # an abandoned epoch cannot be reset in DALI: start afresh next time
                self._runs_now = None

    def _outputs(self):
        """DALI's batches (each run cut into ``batches_per_run`` batches: views of its outputs); a failed read ("Critical error in pipeline", which often names no file) becomes one line
        naming the shard: the sample whose frame count its video does not hold, the shard whose SHA-256 changed
        when a check finds one, else this rank's shards."""
        try:
            size = self.cfg.batch_size
            for outputs, _ in self._ensure_runs().epoch(self.runs_per_epoch, self._names, run_ahead=not self.train):
                for k in range(self.batches_per_run):
                    yield {name: value[k * size : (k + 1) * size] for name, value in outputs.items()}
        except RuntimeError as e:
            tars = self.rank_tars()
            if _OUT_OF_RANGE in str(e) and not changed_shards(self.shardset, tars):  # a changed tar says more
                mismatch = frame_count_mismatch(self.shardset, tars)
                if mismatch is not None:
                    raise mismatch from None
            raise read_failure(self.shardset, tars, "DALI", _dali_reason(str(e))) from e

    def _batch(self, out: dict, position: int, target: torch.device, windows: np.random.Generator | None) -> Batch:
        n = out["label"].shape[0]
        video = out["video"].permute(0, 1, 4, 2, 3)  # N,T,H,W,C memory → N,T,C,H,W view (channels-last)
        if windows is not None:  # the host crop: windows and flips drawn here, the graph's frames uncropped
            boxes, flips = crop.draw_windows(n, self.frame_size, windows)
            video = crop.crop_batch(video, boxes, flips, self.cfg)
            out = {**out, "crop_box": torch.from_numpy(boxes), "flipped": torch.from_numpy(flips)}
        valid = torch.arange(position, position + n) < self.rank_samples
        index = self._index_of(out["info"])
        self._check_labels(out["label"], index)
        streams = out["streams"]  # CPU (from meta.i32, like the label)
        return Batch(
            video=video,
            audio=out["audio"],
            audio_len=out["audio_len"].to(target, non_blocking=True),
            label=out["label"].to(target, non_blocking=True),
            index=index.to(target, non_blocking=True),
            valid=valid.to(target, non_blocking=True),
            audio_present=((streams & fmt.STREAM_AUDIO) != 0).to(target, non_blocking=True),
            video_present=((streams & fmt.STREAM_VIDEO) != 0).to(target, non_blocking=True),
            **self._crops(out, n, target),
        )

    def _crops(self, out: dict, n: int, target: torch.device) -> dict:
        """crop_box and flipped of a batch: training's draws (the graph's or the host crop's), evaluation's constant
        window otherwise."""
        if self._eval_crop is None:
            return dict(crop_box=out["crop_box"].to(target, non_blocking=True),
                        flipped=out["flipped"].to(target, non_blocking=True))
        return dict(crop_box=self._eval_crop.expand(n, 4).to(target), flipped=torch.zeros(n, dtype=torch.bool, device=target))

    def _check_labels(self, label: torch.Tensor, index: torch.Tensor) -> None:
        """Labels come from ``meta.i32`` on the CPU: a corrupt one is named here (on the GPU the loss would hit a
        device-side assert that names nothing)."""
        if label.device.type != "cpu":
            return  # reading a GPU tensor would sync the device every batch
        num_classes = self.cfg.num_classes
        bad = ((label < 0) | (label >= num_classes)).nonzero().flatten().tolist()
        if bad:
            tar, key = self._keys[int(index[bad[0]])]
            raise AvdaliError(
                f"{tar}: sample {key} has label {int(label[bad[0]])}, outside the {num_classes} classes of "
                f"{self.cfg.label_space} (corrupt shard?); check the folder with `avdali inspect {self.shardset.root}`"
            )


def _dali_reason(message: str) -> str:
    """The line of a DALI pipeline error that says what failed (after "encountered:"), without the C++ context."""
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    if "encountered:" in lines:
        after = lines[lines.index("encountered:") + 1 :]
        lines = after or lines
    lines = [ln for ln in lines if not ln.startswith(("C++ context", "Current pipeline object", "Critical error"))]
    return lines[0] if lines else message.strip()[:200]
