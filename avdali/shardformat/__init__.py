"""The shard format: what ``avdali shard`` writes and every reader (loaders, ``inspect``, ``eval``, ``predict``) reads.

The packer (``packing``) and the readers (``data``, ``train``) both import this package and never each other, so a
change to the format is made here once. No torch here. The modules:

- here: the names of shards, indexes and sample components, and the format version;
- ``members``: tar member names, ``meta.i32`` encode/decode, safe member iteration (``iter_members``);
- ``index``: the DALI ``.idx`` beside each tar, written and read;
- ``manifest``: ``manifest.json``'s schema (``ShardFile``/``ShardEntry``/``Manifest``), written and read;
- ``options``: the pack options, recorded in the manifest (they decide the bytes of a shard);
- ``probe``: decode a webm/flac member to count what it holds; ``inspect``: check a folder against its manifest.

Writing files atomically (``*.tmp`` + rename) and hashing them is ``avdali.files``, shared with checkpoints.

A sample is one tar member per component, all named ``{key}.{ext}`` (webdataset convention,
extension = everything after the first dot), written in sorted extension order:

=============  =========================================================================
``cls``        unified 7-class label id as ASCII digits (webdataset's ``cls`` convention)
``flac``       mono 16 kHz 16-bit FLAC (DALI decodes FLAC on the CPU; it cannot read AAC)
``json``       metadata (dataset, split, labels, ids, text, source, duration, frames, fps, face crop)
``meta.i32``   little-endian int32 vector ``META_FIELDS`` for DALI (``dtypes=INT32``), no JSON parsing
``webm``       VP9 video in WebM, square face crop, ``size``x``size`` at ``fps`` (decodes on CPU and NVDEC)
=============  =========================================================================

A clip packed with ``--keep-partial`` that lacks a stream still has every member: the missing stream is a
placeholder (silent FLAC as long as the video, or black VP9 frames covering the audio) and ``streams`` in
``meta.i32`` (and ``streams``/``missing`` in the json) say which streams are real.

Shards are ``{dataset}-{split}-{index:06d}.tar`` with a DALI index ``.idx`` beside each
(the format ``wds2idx`` writes) and ``manifest.json`` at the root. A split's clips are spread over its shards in an
order shuffled with the pack's ``shuffle_seed`` (readers read in stored order: every shard holds a mix of labels).
"""

FORMAT_VERSION = 3
"""Bumped on any change a reader of older shards would misread, or that makes a folder's shards differ from what the
packer now writes (``avdali shard`` re-packs a folder of another version); readers refuse versions not in
``READABLE_VERSIONS``.
2: ``meta.i32`` gained ``streams`` (clips packed with ``--keep-partial`` may lack a real stream).
3: each split's clips are shuffled at pack time (seed recorded in the manifest's options as ``shuffle_seed``)."""
READABLE_VERSIONS = (1, 2, 3)
"""Versions readers accept. A format-1 sample's ``meta.i32`` has no ``streams``: both streams are real. Formats 1
and 2 hold each split's clips in file-name order; their manifests have no ``shuffle_seed``."""

VIDEO_EXT = "webm"
AUDIO_EXT = "flac"
LABEL_EXT = "cls"
META_EXT = "json"
NUMS_EXT = "meta.i32"

META_FIELDS = ("frames", "label", "native_label", "audio_samples", "streams")
"""Order of the int32 values in ``meta.i32``: decoded frame count of the webm, unified label id,
native label id (RAVDESS 8-class id; MELD: same as unified), number of 16 kHz audio samples, and the bitmask of
real streams (``STREAM_AUDIO | STREAM_VIDEO`` = 3 for a whole clip). Format 1 wrote the first four only; new
fields are only ever appended, so ``meta[0..3]`` mean the same in both."""
META_FIELDS_V1 = META_FIELDS[:4]
"""``meta.i32`` of a format-1 shard (16 bytes): read as ``streams = STREAMS_ALL``."""

STREAM_AUDIO = 1
"""``streams`` bit: the flac holds the clip's real audio (clear: a silent placeholder of the clip's length)."""
STREAM_VIDEO = 2
"""``streams`` bit: the webm holds the clip's real picture (clear: black placeholder frames at the pack fps)."""
STREAMS_ALL = STREAM_AUDIO | STREAM_VIDEO

AUDIO_RATE = 16_000
MANIFEST_NAME = "manifest.json"


def shard_name(dataset: str, split: str, index: int) -> str:
    """File name of a shard's tar, e.g. ``ravdess-fold1-000000.tar``."""
    return f"{dataset}-{split}-{index:06d}.tar"


def index_name(tar_name: str) -> str:
    """File name of the DALI index beside a tar (``x.tar`` → ``x.idx``)."""
    return tar_name[: -len(".tar")] + ".idx"
