"""The NVIDIA DALI input pipeline: the only module that imports DALI.

The graph is composed the way DALI's examples compose theirs: ``read_samples`` (the webdataset reader), then
``video_graph`` and ``audio_graph`` (sub-graphs that follow the clip specification, ``clipspec.py``, computed with
``GRAPH_OPS`` so the numbers are those of the torch loader's kernel), and ``av_pipeline`` ties them together. One
``@pipeline_def`` serves CPU and GPU (``device`` is a parameter): on ``"cuda"`` the video is decoded by the CPU threads
and moved to the GPU at once (the hybrid, ``data.decode = "cpu"``, what ``auto`` picks) or by NVDEC (``mixed``,
``"gpu"``), and every later video and audio-feature op runs on the GPU; on ``"cpu"`` everything runs on the CPU
threads.

Each clip's frames are decoded once per distinct index, in stream order, then put in order (``decode_plan``): DALI's
decoders seek back to the keyframe for a repeated or backward index, and NVDEC in DALI 2.4 decodes from frame 0
again. An index past the stored video (a ``meta.i32`` frame count larger than the webm holds) stops the epoch with a
line naming the shard and the sample (``pad_mode="none"``), never a black frame.

Sample order (``order.py``): evaluation reads the stored order, rank r the range ``rank_range``, built once; training
builds a pipeline per epoch whose file list is that epoch's ``order.reading_order`` (the reader gives rank r the same
``rank_range`` of it), seeded by (seed, rank, epoch), so an epoch depends on nothing before it. With
``pad_last_batch=True`` the reader repeats a rank's last sample until every rank has ``order.batches_per_epoch``
full batches; the iterator marks the first ``hi - lo`` samples of a rank's epoch valid and the repeats invalid
(exact in evaluation, where the reader does not shuffle; in training the count is right but the repeats may sit
anywhere in the shuffled stream). ``index`` comes from each sample's ``source_info`` ("tar:offset:name", padded to a
fixed length in the graph) looked up in the shard indexes.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali import math as dmath
from nvidia.dali.tensors import TensorGPU

from avdali import shardformat as fmt
from avdali.data import clipspec, order
from avdali.data.batch import Batch
from avdali.data.config import DataConfig, resolve_decode
from avdali.data.integrity import changed_shards, frame_count_mismatch, read_failure
from avdali.data.normalize import IMAGENET_MEAN, IMAGENET_STD
from avdali.data.shards import ShardSet
from avdali.errors import AvdaliError

OUTPUTS = ("video", "audio", "audio_len", "label", "info", "streams", "crop_box", "flipped")
_VIDEO_DTYPES = {"uint8": types.UINT8, "float16": types.FLOAT16, "float32": types.FLOAT}
_INTERPS = {"nearest": types.INTERP_NN, "linear": types.INTERP_LINEAR}
_OUT_OF_RANGE = "out-of-bounds frame index"
"""What DALI's decoder says when a frame index is past the stored video (``pad_mode="none"``)."""

GRAPH_OPS = SimpleNamespace(
    const=lambda values: types.Constant(np.asarray(values, dtype=np.int32)),
    floor=dmath.floor,
    minimum=dmath.min,
    maximum=dmath.max,
    sqrt=dmath.sqrt,
    exp=dmath.exp,
    to_int=lambda x: fn.cast(x, dtype=types.INT32),
    to_float=lambda x: fn.cast(x, dtype=types.FLOAT),
)
"""The clip specification's operations inside a DALI graph (``clipspec.NUMPY``'s twin)."""


def hann_window() -> list[float]:
    """The periodic Hann window torch/torchaudio use (DALI's default differs in the last digits)."""
    return torch.hann_window(clipspec.WINDOW, periodic=True, dtype=torch.float64).tolist()


def decode_plan(indices, num_frames, t: int):
    """How the decoder reads ``indices`` (``clipspec.frame_indices`` of a clip of ``num_frames``, non-decreasing)
    decoding each frame once: ``(frames to decode, positions)``, the sampled frames being
    ``sequence_rearrange(decoded, positions)``. When n ≥ T the indices are distinct and are decoded as they are; a
    shorter clip decodes its n frames once and repeats them by position."""
    i = GRAPH_OPS.const(np.arange(t))
    short = fn.cast(num_frames < t, dtype=types.INT32)  # 1 when the clip repeats frames
    frames = indices * (1 - short) + i * short
    frames = fn.slice(frames, fn.stack(0), fn.stack(dmath.min(num_frames, t)), axes=[0],
                      normalized_anchor=False, normalized_shape=False)
    return frames, i * (1 - short) + indices * short


def read_samples(*, paths: list[str], index_paths: list[str], train: bool, shard_id: int, num_shards: int,
                 shuffle_buffer: int):
    """The webdataset reader: (webm, flac, meta.i32) of this rank's range of ``paths``, shuffled through a buffer of
    ``shuffle_buffer`` samples in training."""
    return fn.readers.webdataset(
        paths=paths,
        index_paths=index_paths,
        ext=[fmt.VIDEO_EXT, fmt.AUDIO_EXT, fmt.NUMS_EXT],
        dtypes=[types.UINT8, types.UINT8, types.INT32],
        missing_component_behavior="error",
        name="Reader",
        shard_id=shard_id,
        num_shards=num_shards,
        pad_last_batch=True,
        stick_to_shard=True,  # a rank keeps its range: the valid/index bookkeeping relies on it
        random_shuffle=train,
        initial_fill=shuffle_buffer,
    )


def video_graph(webm, num_frames, cfg: DataConfig, *, jitter: bool, gpu: bool, decode: str,
                frame_size: tuple[int, int]):
    """Frames T,H,W,C of the clip specification (``crop`` square, uint8 or ImageNet-normalised floats) and the crop
    window (top, left, h, w; int32) and flip (bool) that made them."""
    t, crop = cfg.frames, cfg.crop
    height, width = frame_size
    u = fn.random.uniform(range=[0.0, 1.0], shape=[t]) if jitter else None
    frames, positions = decode_plan(clipspec.frame_indices(num_frames, t, u, GRAPH_OPS), num_frames, t)
    video = fn.decoders.video(webm, device="mixed" if gpu and decode == "gpu" else "cpu", frames=frames,
                              pad_mode="none")  # F,H,W,C uint8; an index past the video raises (named by the loader)
    if gpu and decode == "cpu":
        video = video.gpu()  # hybrid: only the decode runs on the CPU threads; everything after it on the GPU
    video = fn.sequence_rearrange(video, new_order=positions)

    # The layout stays T,H,W,C: the iterator hands it over as an N,T,C,H,W view whose memory is channels-last.
    out_dtype = _VIDEO_DTYPES[cfg.video_dtype]
    norm = {}
    if cfg.video_dtype != "uint8":
        norm = dict(mean=[m * 255 for m in IMAGENET_MEAN], std=[s * 255 for s in IMAGENET_STD])
    if jitter:
        top, left, h, w = clipspec.random_crop_box(fn.random.uniform(range=[0.0, 1.0], shape=[4]), height, width,
                                                   GRAPH_OPS)
        flip = fn.cast(fn.random.coin_flip(probability=clipspec.FLIP_PROBABILITY), dtype=types.INT32)
        # a flipped window (start > end along x) makes the resize mirror the crop: no separate flip pass
        start = fn.cast(fn.stack(top, left + flip * w), dtype=types.FLOAT)
        end = fn.cast(fn.stack(top + h, left + w - flip * w), dtype=types.FLOAT)
        video = fn.resize(video, roi_start=start, roi_end=end, roi_relative=False, size=[crop, crop],
                          interp_type=_INTERPS[cfg.crop_interp], antialias=clipspec.CROP_ANTIALIAS)
        if norm:
            video = fn.crop_mirror_normalize(video, dtype=out_dtype, output_layout="FHWC", **norm)
        return video, fn.stack(top, left, h, w), fn.cast(flip, dtype=types.BOOL)
    top, left, side = clipspec.center_crop_box(height, width, crop)
    video = fn.crop_mirror_normalize(
        video,
        crop=[side, side],
        crop_pos_x=0.5,
        crop_pos_y=0.5,
        rounding="truncate",  # (W - side) // 2, as clipspec.center_crop_box
        dtype=types.UINT8 if side != crop else out_dtype,
        output_layout="FHWC",
        **({} if side != crop else norm),
    )
    if side != crop:  # frames smaller than the crop: scale the centred square up
        video = fn.resize(video, size=[crop, crop], antialias=True)
        video = fn.crop_mirror_normalize(video, dtype=out_dtype, output_layout="FHWC", **norm)
    box = fn.cast(num_frames * 0, dtype=types.INT32) + GRAPH_OPS.const([top, left, side, side])
    return video, box, fn.cast(num_frames * 0, dtype=types.BOOL)


def audio_graph(flac, cfg: DataConfig, *, jitter: bool, gpu: bool):
    """Features F,A of the clip specification's audio window (standardised per bin over the valid frames, or raw
    with ``data.speaker_norm``, whose stage standardises them), zero-padded, and the valid frame count (int64)."""
    window = clipspec.window_samples(cfg.audio_seconds)
    audio, _rate = fn.decoders.audio(flac, sample_rate=clipspec.SAMPLE_RATE, downmix=True, dtype=types.FLOAT)
    length = audio.shape(dtype=types.INT32)[0]
    u = fn.random.uniform(range=[0.0, 1.0]) if jitter else None
    start = clipspec.audio_start(length, window, u, GRAPH_OPS)
    valid = dmath.min(length - start, window)
    audio = fn.slice(audio, fn.stack(start), fn.stack(valid), axes=[0], normalized_anchor=False,
                     normalized_shape=False)
    if gpu:
        audio = audio.gpu()
    spec = fn.spectrogram(audio, nfft=clipspec.NFFT, window_length=clipspec.WINDOW, window_step=clipspec.HOP,
                          window_fn=hann_window(), center_windows=True, reflect_padding=True, power=2)
    feats = fn.mel_filter_bank(spec, nfilter=cfg.n_mels, sample_rate=clipspec.SAMPLE_RATE, freq_low=clipspec.F_MIN,
                               freq_high=clipspec.F_MAX, mel_formula="slaney", normalize=True)
    feats = fn.to_decibels(feats, multiplier=10.0, reference=1.0, cutoff_db=clipspec.DB_FLOOR)
    if cfg.features == "mfcc":
        feats = fn.mfcc(feats, n_mfcc=cfg.n_mfcc, dct_type=2, normalize=True, axis=0)
    if not cfg.speaker_norm:  # per clip and bin over time, before padding, so the padding does not skew it
        feats = fn.normalize(feats, axes=[1], epsilon=clipspec.NORM_EPS)
    feats = fn.pad(feats, axes=[1], shape=[clipspec.feature_frames(window)], fill_value=0.0)
    return feats, fn.cast(1 + valid // clipspec.HOP, dtype=types.INT64)


@pipeline_def(enable_conditionals=False)
def av_pipeline(
    *,
    paths: list[str],
    index_paths: list[str],
    cfg: DataConfig,
    device: str,
    train: bool,
    shard_id: int,
    num_shards: int,
    frame_size: tuple[int, int],
    info_len: int,
    decode: str = "cpu",
):
    """Reader → video frames (N,T,H,W,C) + audio features (N,F,A) + audio_len + label + source_info + streams
    (the real-streams bitmask of ``meta.i32``; a format-1 sample's shorter vector reads as both real) + crop_box +
    flipped.

    ``device``: ``"cpu"`` or ``"gpu"``; ``decode`` (``device="gpu"`` only): ``"cpu"`` decodes on the CPU threads with
    the frames moved to the GPU at once, ``"gpu"`` on NVDEC; ``frame_size``: (height, width) of the stored frames.
    """
    gpu = device == "gpu"
    jitter = train and cfg.augment
    webm, flac, meta = read_samples(paths=paths, index_paths=index_paths, train=train, shard_id=shard_id,
                                    num_shards=num_shards, shuffle_buffer=cfg.shuffle_buffer)
    info = fn.pad(fn.get_property(webm, key="source_info"), axes=[0], shape=[info_len], fill_value=0)
    video, box, flipped = video_graph(webm, meta[0], cfg, jitter=jitter, gpu=gpu, decode=decode, frame_size=frame_size)
    feats, audio_len = audio_graph(flac, cfg, jitter=jitter, gpu=gpu)
    label = fn.cast(meta[1] if cfg.label_space == "unified" else meta[2], dtype=types.INT64)
    return video, feats, audio_len, label, info, meta_streams(meta), box, flipped


def meta_streams(meta):
    """``streams`` of ``meta.i32`` in the graph, per sample: a format-1 vector (4 values, no ``streams``) is padded
    with ``STREAMS_ALL`` first, so shards of both formats read alike, even mixed in one batch."""
    index = fmt.META_FIELDS.index("streams")
    return fn.pad(meta, axes=[0], shape=[len(fmt.META_FIELDS)], fill_value=fmt.STREAMS_ALL)[index]


@pipeline_def
def decode_only_pipeline(*, paths: list[str], index_paths: list[str], frames: int, jitter: bool):
    """DALI's CPU video decoder alone on the frames the training loaders decode (reader → ``decoders.video`` of
    ``decode_plan``'s frames, not put in order): the decode ceiling ``avdali bench loader`` compares the loaders
    with."""
    webm, meta = fn.readers.webdataset(
        paths=paths, index_paths=index_paths,
        ext=[fmt.VIDEO_EXT, fmt.NUMS_EXT], dtypes=[types.UINT8, types.INT32], missing_component_behavior="error",
    )
    u = fn.random.uniform(range=[0.0, 1.0], shape=[frames]) if jitter else None
    picks, _positions = decode_plan(clipspec.frame_indices(meta[0], frames, u, GRAPH_OPS), meta[0], frames)
    return fn.decoders.video(webm, frames=picks, pad_mode="none")


def pipeline_seed(seed: int, rank: int, epoch: int) -> int:
    """A distinct, reproducible DALI seed per (run seed, rank, epoch)."""
    return (seed * 1_000_003 + rank * 10_007 + epoch * 101 + 1) % (2**31 - 1)


def info_length(shardset: ShardSet) -> int:
    """Bytes to pad ``source_info`` to: the longest "tar:offset:name.webm" of these shards (+ room)."""
    longest = max(len(f.tar) + 1 + len(str(max(f.video_offsets))) + 1 + max(map(len, f.keys)) for f in shardset.files)
    return longest + 16


class PipelineRuns:
    """A built pipeline's batches as torch tensors, ``batches`` per epoch, through DALI's public scheduling API
    (``schedule_run`` / ``share_outputs`` / ``release_outputs``, as DALI's PyTorch iterator drives it). The first
    ``prefetch`` runs are scheduled at once and one more per batch taken; with ``stop_after_epoch`` (a training
    pipeline, dropped after its one epoch) none past the epoch's last batch: DALI's iterator always keeps
    ``prefetch`` runs ahead, which here would decode the next epoch's first batches only to throw them away, and
    dropping the pipeline would wait for them (~350 ms of CPU per epoch on 2 cores)."""

    def __init__(self, pipe, batches: int, prefetch: int, *, stop_after_epoch: bool):
        self.pipe, self.batches, self.stop_after_epoch = pipe, batches, stop_after_epoch
        pipe.build()
        pipe.schedule_run()  # the first call schedules ``prefetch`` runs
        self.scheduled = prefetch

    def epoch(self):
        """One epoch: ``batches`` dicts of OUTPUTS → torch tensors (on the pipeline's device)."""
        for _ in range(self.batches):
            outputs = self.pipe.share_outputs()
            batch = {name: _to_torch(out, self.pipe.exec_dynamic) for name, out in zip(OUTPUTS, outputs)}
            self.pipe.release_outputs()
            if not (self.stop_after_epoch and self.scheduled >= self.batches):
                self.pipe.schedule_run()
                self.scheduled += 1
            yield batch


def _to_torch(out, zero_copy: bool) -> torch.Tensor:
    """A DALI output (TensorList) as one torch tensor: a DLPack view when DALI keeps released buffers valid (its
    dynamic executor, the default), else a copy."""
    tensor = out.as_tensor()
    if isinstance(tensor, TensorGPU):
        with torch.cuda.device(tensor.device_id):
            view = torch.from_dlpack(tensor)
    else:
        view = torch.from_dlpack(tensor)
    return view if zero_copy else view.clone()


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
    ):
        self.cfg, self.shardset, self.train = cfg, shardset, train
        self.device, self.rank, self.world_size, self.seed = device, rank, world_size, seed
        self.frame_size = frame_size
        self.decode = "cpu" if device != "cuda" else resolve_decode(cfg.decode)
        """Where video is decoded: ``cpu`` (CPU pipeline, or the hybrid on CUDA) or ``gpu`` (NVDEC)."""
        self.num_samples = shardset.num_samples
        lo, hi = order.rank_range(self.num_samples, rank, world_size)
        self.rank_samples = hi - lo
        self.epoch = 0
        self._runs_now: PipelineRuns | None = None
        self._next: tuple[int, PipelineRuns] | None = None  # the next training epoch's pipeline, built ahead
        self._info_len = info_length(shardset)
        self._lookup = {(f.tar, off): f.first + j for f in shardset.files for j, off in enumerate(f.video_offsets)}
        self._keys = {f.first + j: (f.tar, key) for f in shardset.files for j, key in enumerate(f.keys)}

    def __len__(self) -> int:
        return order.batches_per_epoch(self.num_samples, self.cfg.batch_size, self.world_size)

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
            batch_size=self.cfg.batch_size,
            num_threads=self.cfg.num_threads,
            device_id=device_id,
            seed=pipeline_seed(self.seed, self.rank, epoch if self.train else 0),
            prefetch_queue_depth=self.cfg.prefetch,
        )

    def _runs(self, epoch: int) -> PipelineRuns:
        """A built pipeline for ``epoch``, already decoding its first batches."""
        device_id = torch.cuda.current_device() if self.device == "cuda" else None
        return PipelineRuns(self.make_pipeline(device_id, epoch), len(self), self.cfg.prefetch,
                            stop_after_epoch=self.train)

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
        out = []
        for row in info.cpu().numpy():
            text = row.tobytes().rstrip(b"\0").decode()
            tar, offset, _name = text.rsplit(":", 2)
            out.append(self._lookup[(tar, int(offset))])
        return torch.tensor(out, dtype=torch.int64)

    def __iter__(self):
        target = torch.device(f"cuda:{torch.cuda.current_device()}") if self.device == "cuda" else torch.device("cpu")
        position = 0
        finished = False
        ahead = max(len(self) - self.cfg.prefetch, 0)  # from this batch on, the next epoch's pipeline decodes too
        try:
            for step, outputs in enumerate(self._outputs()):
                if self.train and step == ahead and self._next is None:
                    self._next = (self.epoch + 1, self._runs(self.epoch + 1))
                yield self._batch(outputs, position, target)
                position += self.cfg.batch_size
            finished = True
        finally:
            if not finished or self.train:  # an abandoned epoch cannot be reset in DALI: start afresh next time
                self._runs_now = None

    def _outputs(self):
        """DALI's batches; a failed read ("Critical error in pipeline", which often names no file) becomes one line
        naming the shard: the sample whose frame count its video does not hold, the shard whose SHA-256 changed
        when a check finds one, else this rank's shards."""
        try:
            yield from self._ensure_runs().epoch()
        except RuntimeError as e:
            tars = self.rank_tars()
            if _OUT_OF_RANGE in str(e) and not changed_shards(self.shardset, tars):  # a changed tar says more
                mismatch = frame_count_mismatch(self.shardset, tars)
                if mismatch is not None:
                    raise mismatch from None
            raise read_failure(self.shardset, tars, "DALI", _dali_reason(str(e))) from e

    def _batch(self, out: dict, position: int, target: torch.device) -> Batch:
        n = out["label"].shape[0]
        valid = torch.arange(position, position + n) < self.rank_samples
        index = self._index_of(out["info"])
        self._check_labels(out["label"], index)
        streams = out["streams"]  # CPU (from meta.i32, like the label)
        return Batch(
            video=out["video"].permute(0, 1, 4, 2, 3),  # N,T,H,W,C memory → N,T,C,H,W view (channels-last)
            audio=out["audio"],
            audio_len=out["audio_len"].to(target, non_blocking=True),
            label=out["label"].to(target, non_blocking=True),
            index=index.to(target, non_blocking=True),
            valid=valid.to(target, non_blocking=True),
            audio_present=((streams & fmt.STREAM_AUDIO) != 0).to(target, non_blocking=True),
            video_present=((streams & fmt.STREAM_VIDEO) != 0).to(target, non_blocking=True),
            crop_box=out["crop_box"].to(target, non_blocking=True),
            flipped=out["flipped"].to(target, non_blocking=True),
        )

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


# --- probes for `avdali doctor` and the native-load check (avdali.machine.libraries): tiny pipelines, nothing read from disk ---


@pipeline_def(enable_conditionals=False)
def _probe_pipeline(*, gpu: bool):
    values = fn.external_source(source=lambda: np.arange(8, dtype=np.float32), batch=False)
    return (values.gpu() if gpu else values) * 2.0 + 1.0


def probe_pipeline(device_id: int | None = None) -> None:
    """Build and run a one-sample pipeline (CPU when ``device_id`` is None, else its GPU ops on that device) and
    check the arithmetic: DALI's backend (and its CUDA side) loads and computes."""
    pipe = _probe_pipeline(gpu=device_id is not None, batch_size=1, num_threads=1, device_id=device_id,
                           prefetch_queue_depth=1)
    pipe.build()
    (out,) = pipe.run()
    got = np.asarray((out.as_cpu() if device_id is not None else out).at(0))
    if not np.array_equal(got, np.arange(8, dtype=np.float32) * 2 + 1):
        raise RuntimeError(f"DALI probe pipeline computed {got.tolist()}")


def probe_cpu_pipeline() -> None:
    probe_pipeline(None)


@pipeline_def(enable_conditionals=False)
def _probe_video_pipeline(*, encoded: np.ndarray, device: str):
    data = fn.external_source(source=lambda: encoded, batch=False)
    return fn.decoders.video(data, device=device)


def probe_video_decode(encoded: bytes, device_id: int | None = 0) -> np.ndarray:
    """Decode one in-memory video with DALI: the ``mixed`` (NVDEC) decoder on ``device_id``, or the CPU decoder when
    ``device_id`` is None. Frames F,H,W,C uint8."""
    pipe = _probe_video_pipeline(encoded=np.frombuffer(encoded, dtype=np.uint8), device="cpu" if device_id is None else "mixed",
                                 batch_size=1, num_threads=1, device_id=device_id, prefetch_queue_depth=1)
    pipe.build()
    (out,) = pipe.run()
    return np.asarray((out if device_id is None else out.as_cpu()).at(0))
