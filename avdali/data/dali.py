"""The NVIDIA DALI input pipeline: the only module that imports DALI.

One ``@pipeline_def`` serves CPU and GPU (``device`` is a parameter): on ``"cuda"`` the video is decoded by
NVDEC (``mixed``, ``data.decode = "gpu"``) or by the CPU threads and moved to the GPU at once (``"cpu"``, the
hybrid), and every later video and audio-feature op runs on the GPU; on ``"cpu"`` everything runs on the CPU
threads. Frame indices and the audio window follow ``sampling.py`` exactly (integer arithmetic in
the graph), so the torch loader reads the same frames and samples.

Bookkeeping for exact evaluation: the reader splits the chosen samples into ``world_size`` contiguous ranges
(``sampling.rank_range``) and, with ``pad_last_batch=True``, repeats a rank's last sample until every rank
has ``sampling.batches_per_epoch`` full batches. The iterator marks the first ``hi - lo`` samples of a rank's
epoch valid and the repeats invalid (exact in evaluation, where the reader does not shuffle; in training the
count is right but the repeats may sit anywhere in the shuffled stream). ``index`` comes from each sample's
``source_info`` ("tar:offset:name", padded to a fixed length in the graph) looked up in the shard indexes.
"""

from __future__ import annotations

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali import math as dmath
from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

from avdali import native
from avdali import shardformat as fmt
from avdali.data import sampling
from avdali.data.batch import Batch
from avdali.data.config import DataConfig, resolve_decode
from avdali.data.integrity import rank_tars, read_failure
from avdali.data.normalize import IMAGENET_MEAN, IMAGENET_STD
from avdali.data.shards import ShardSet
from avdali.errors import AvdaliError

OUTPUTS = ("video", "audio", "audio_len", "label", "info", "streams")
RANDOM_AREA = (0.35, 1.0)
"""Random resized crop: share of the frame area kept (faces: a mild zoom, never a tiny patch)."""
RANDOM_ASPECT = (3 / 4, 4 / 3)
"""Random resized crop: aspect ratio range of the crop window."""
DB_CUTOFF = -100.0
"""Floor of the log-mel in dB: 10·log10(1e-10), torchaudio's AmplitudeToDB ``amin``."""
NORM_EPS = 1e-5
"""Added to the variance when normalising features per utterance (silence would divide by zero)."""
_VIDEO_DTYPES = {"uint8": types.UINT8, "float16": types.FLOAT16, "float32": types.FLOAT}
_INTERPS = {"nearest": types.INTERP_NN, "linear": types.INTERP_LINEAR}


def hann_window() -> list[float]:
    """The periodic Hann window torch/torchaudio use (DALI's default differs in the last digits)."""
    return torch.hann_window(sampling.WINDOW, periodic=True, dtype=torch.float64).tolist()


def frame_indices(n, t: int, jitter: bool):
    """``sampling.frame_indices`` in the graph: T indices ``(2*i*n + o_i) // (2*T)`` from the frame count ``n``
    (a DataNode), ``o_i = n`` (segment centres) or drawn uniformly in ``[0, 2n)`` when ``jitter``."""
    two_i = types.Constant(np.arange(t, dtype=np.int32) * 2)
    if jitter:
        u = fn.random.uniform(range=[0.0, 1.0], shape=[t])
        offset = fn.cast(dmath.floor(u * fn.cast(2 * n, dtype=types.FLOAT)), dtype=types.INT32)
        offset = dmath.min(offset, 2 * n - 1)
    else:
        offset = n
    return (two_i * n + offset) // (2 * t)


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
    decode: str = "gpu",
):
    """Reader → video frames (N,T,H,W,C) + audio features (N,F,A) + audio_len + label + source_info + streams
    (the real-streams bitmask of ``meta.i32``; a format-1 sample's shorter vector reads as both real).

    ``device``: ``"cpu"`` or ``"gpu"``; ``decode`` (``device="gpu"`` only): ``"gpu"`` decodes on NVDEC, ``"cpu"``
    on the CPU threads with the frames moved to the GPU before the crop; ``frame_size``: (height, width) of the
    stored webm frames.
    """
    gpu = device == "gpu"
    jitter = train and cfg.augment
    webm, flac, meta = fn.readers.webdataset(
        paths=paths,
        index_paths=index_paths,
        ext=["webm", "flac", "meta.i32"],
        dtypes=[types.UINT8, types.UINT8, types.INT32],
        missing_component_behavior="error",
        name="Reader",
        shard_id=shard_id,
        num_shards=num_shards,
        pad_last_batch=True,
        stick_to_shard=True,  # a rank keeps its range: the valid/index bookkeeping relies on it
        random_shuffle=train,
        initial_fill=cfg.shuffle_buffer,
    )
    info = fn.pad(fn.get_property(webm, key="source_info"), axes=[0], shape=[info_len], fill_value=0)

    frames = frame_indices(meta[0], cfg.frames, jitter)
    video = fn.decoders.video(webm, device="mixed" if gpu and decode == "gpu" else "cpu", frames=frames)  # T,H,W,C uint8
    if gpu and decode == "cpu":
        video = video.gpu()  # hybrid: only the decode runs on the CPU threads; crops and casts run on the GPU

    # ---- crop (one window for all frames of a clip), flip, dtype (+ normalisation) in one op. The layout stays
    # T,H,W,C: the iterator hands it over as an N,T,C,H,W view whose memory is channels-last, as the CNN wants.
    crop = cfg.crop
    out_dtype = _VIDEO_DTYPES[cfg.video_dtype]
    norm = {}
    if cfg.video_dtype != "uint8":
        norm = dict(mean=[m * 255 for m in IMAGENET_MEAN], std=[s * 255 for s in IMAGENET_STD])
    if jitter:
        video = fn.random_resized_crop(
            video, size=[crop, crop], random_area=list(RANDOM_AREA), random_aspect_ratio=list(RANDOM_ASPECT),
            interp_type=_INTERPS[cfg.crop_interp],
            antialias=False,  # the window is mostly scaled up or barely down; antialiasing cost 13 % of throughput
        )
        video = fn.crop_mirror_normalize(
            video, dtype=out_dtype, output_layout="FHWC", mirror=fn.random.coin_flip(probability=0.5), **norm
        )
    else:
        side = min(frame_size[0], frame_size[1], crop)
        video = fn.crop_mirror_normalize(
            video,
            crop=[side, side],
            crop_pos_x=0.5,
            crop_pos_y=0.5,
            rounding="truncate",  # (W - side) // 2, as sampling.center_crop_box
            dtype=types.UINT8 if side != crop else out_dtype,
            output_layout="FHWC",
            **({} if side != crop else norm),
        )
        if side != crop:  # frames smaller than the crop: scale the centred square up
            video = fn.resize(video, size=[crop, crop], antialias=True)
            video = fn.crop_mirror_normalize(video, dtype=out_dtype, output_layout="FHWC", **norm)

    # ---- audio window (sampling.audio_start), then log-mel / MFCC of the valid part only
    window = sampling.window_samples(cfg.audio_seconds)
    audio, _rate = fn.decoders.audio(flac, sample_rate=sampling.SAMPLE_RATE, downmix=True, dtype=types.FLOAT)
    length = audio.shape(dtype=types.INT32)[0]
    slack = dmath.max(length - window, 0)
    if jitter:
        start = fn.cast(dmath.floor(fn.random.uniform(range=[0.0, 1.0]) * fn.cast(slack + 1, dtype=types.FLOAT)), dtype=types.INT32)
        start = dmath.min(start, slack)
    else:
        start = slack // 2
    valid = dmath.min(length - start, window)
    audio = fn.slice(
        audio, fn.stack(start), fn.stack(valid), axes=[0], normalized_anchor=False, normalized_shape=False
    )
    if gpu:
        audio = audio.gpu()
    spec = fn.spectrogram(
        audio,
        nfft=sampling.NFFT,
        window_length=sampling.WINDOW,
        window_step=sampling.HOP,
        window_fn=hann_window(),
        center_windows=True,
        reflect_padding=True,
        power=2,
    )
    feats = fn.mel_filter_bank(
        spec, nfilter=cfg.n_mels, sample_rate=sampling.SAMPLE_RATE, freq_low=0.0, freq_high=sampling.SAMPLE_RATE / 2,
        mel_formula="slaney", normalize=True,
    )
    feats = fn.to_decibels(feats, multiplier=10.0, reference=1.0, cutoff_db=DB_CUTOFF)
    if cfg.features == "mfcc":
        feats = fn.mfcc(feats, n_mfcc=cfg.n_mfcc, dct_type=2, normalize=True, axis=0)
    # per utterance and bin over time, before padding, so the padding does not skew the statistics
    feats = fn.normalize(feats, axes=[1], epsilon=NORM_EPS)
    feats = fn.pad(feats, axes=[1], shape=[sampling.feature_frames(window)], fill_value=0.0)
    audio_len = fn.cast(1 + valid // sampling.HOP, dtype=types.INT64)

    label = fn.cast(meta[1] if cfg.label_space == "unified" else meta[2], dtype=types.INT64)
    return video, feats, audio_len, label, info, meta_streams(meta)


def meta_streams(meta):
    """``streams`` of ``meta.i32`` in the graph, per sample: a format-1 vector (4 values, no ``streams``) is padded
    with ``STREAMS_ALL`` first, so shards of both formats read alike, even mixed in one batch."""
    index = fmt.META_FIELDS.index("streams")
    return fn.pad(meta, axes=[0], shape=[len(fmt.META_FIELDS)], fill_value=fmt.STREAMS_ALL)[index]


@pipeline_def
def decode_only_pipeline(*, paths: list[str], index_paths: list[str], frames: int, jitter: bool):
    """DALI's CPU video decoder alone on the frames the training loaders pick (reader → ``decoders.video``): the
    decode ceiling ``avdali bench loader`` compares the loaders with."""
    webm, meta = fn.readers.webdataset(
        paths=paths, index_paths=index_paths,
        ext=[fmt.VIDEO_EXT, fmt.NUMS_EXT], dtypes=[types.UINT8, types.INT32], missing_component_behavior="error",
    )
    return fn.decoders.video(webm, frames=frame_indices(meta[0], frames, jitter=jitter))


def pipeline_seed(seed: int, rank: int, epoch: int) -> int:
    """A distinct, reproducible DALI seed per (run seed, rank, epoch)."""
    return (seed * 1_000_003 + rank * 10_007 + epoch * 101 + 1) % (2**31 - 1)


def info_length(shardset: ShardSet) -> int:
    """Bytes to pad ``source_info`` to: the longest "tar:offset:name.webm" of these shards (+ room)."""
    longest = max(len(f.tar) + 1 + len(str(max(f.video_offsets))) + 1 + max(map(len, f.keys)) for f in shardset.files)
    return longest + 16


class DaliLoader:
    """Batches from the DALI pipeline: ``len()`` batches per epoch on every rank, ``set_epoch`` reseeds."""

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
        self.decode = "cpu" if device != "cuda" else resolve_decode(
            cfg.decode, lambda: native.nvdec_usable(torch.cuda.current_device() if torch.cuda.is_available() else 0)
        )
        """Where video is decoded: ``cpu`` (CPU pipeline, or the hybrid on CUDA) or ``gpu`` (NVDEC)."""
        self.num_samples = shardset.num_samples
        lo, hi = sampling.rank_range(self.num_samples, rank, world_size)
        self.rank_samples = hi - lo
        self.epoch = 0
        self._built_for: int | None = None
        self._iterator = None
        self._info_len = info_length(shardset)
        self._lookup = {(f.tar, off): f.first + j for f in shardset.files for j, off in enumerate(f.video_offsets)}
        self._keys = {f.first + j: (f.tar, key) for f in shardset.files for j, key in enumerate(f.keys)}
        self._tars = rank_tars(shardset, rank, world_size)

    def __len__(self) -> int:
        return sampling.batches_per_epoch(self.num_samples, self.cfg.batch_size, self.world_size)

    def set_epoch(self, epoch: int) -> None:
        """Training reshuffles: the pipeline is seeded by (seed, rank, first epoch) and continues its random
        stream through consecutive epochs; evaluation is the same every epoch."""
        self.epoch = epoch

    def make_pipeline(self, device_id: int | None):
        """The pipeline object for this rank (defined, not built)."""
        files = self.shardset.files
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
            seed=pipeline_seed(self.seed, self.rank, self.epoch if self.train else 0),
            prefetch_queue_depth=self.cfg.prefetch,
        )

    def _ensure_iterator(self):
        # Training: a pipeline seeded for (seed, rank, epoch e) runs on through e+1, e+2 … with its own RNG
        # stream (rebuilding per epoch costs a pipeline start and a refill of the shuffle buffer); a jump to
        # any other epoch (resume) builds a pipeline seeded for that epoch.
        wanted = self.epoch if self.train else 0
        if self._iterator is not None and self._built_for == wanted:
            return self._iterator
        self._iterator = None  # release the old pipeline's threads before starting new ones
        device_id = torch.cuda.current_device() if self.device == "cuda" else None
        pipe = self.make_pipeline(device_id)
        pipe.build()
        self._iterator = DALIGenericIterator(
            [pipe], list(OUTPUTS), reader_name="Reader", last_batch_policy=LastBatchPolicy.FILL, auto_reset=True
        )
        self._built_for = wanted
        return self._iterator

    def _index_of(self, info: torch.Tensor) -> torch.Tensor:
        out = []
        for row in info.cpu().numpy():
            text = row.tobytes().rstrip(b"\0").decode()
            tar, offset, _name = text.rsplit(":", 2)
            out.append(self._lookup[(tar, int(offset))])
        return torch.tensor(out, dtype=torch.int64)

    def __iter__(self):
        iterator = self._ensure_iterator()
        target = torch.device(f"cuda:{torch.cuda.current_device()}") if self.device == "cuda" else torch.device("cpu")
        position = 0
        finished = False
        try:
            for outputs in self._outputs(iterator):
                yield self._batch(outputs[0], position, target)
                position += self.cfg.batch_size
            finished = True
            if self.train:
                self._built_for = self.epoch + 1  # the pipeline's next epoch
        finally:
            if not finished:  # an abandoned epoch cannot be reset in DALI: start afresh next time
                self._iterator = self._built_for = None

    def _outputs(self, iterator):
        """DALI's batches; a failed read ("Critical error in pipeline", which often names no file) becomes one line
        naming the shard: the one whose SHA-256 changed when a check finds it, else this rank's shards."""
        try:
            yield from iterator
        except RuntimeError as e:
            raise read_failure(self.shardset, self._tars, "DALI", _dali_reason(str(e))) from e

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


# --- probes for `avdali doctor` and the native-load check (avdali.native): tiny pipelines, nothing read from disk ---


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
