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

Shards are ``{dataset}-{split}-{index:06d}.tar`` with a DALI index ``.idx`` beside each
(the format ``wds2idx`` writes) and ``manifest.json`` at the root.
"""

FORMAT_VERSION = 1
"""Bumped on any change a reader of older shards would misread; readers refuse other versions."""

VIDEO_EXT = "webm"
AUDIO_EXT = "flac"
LABEL_EXT = "cls"
META_EXT = "json"
NUMS_EXT = "meta.i32"

META_FIELDS = ("frames", "label", "native_label", "audio_samples")
"""Order of the int32 values in ``meta.i32``: decoded frame count of the webm, unified label id,
native label id (RAVDESS 8-class id; MELD: same as unified), number of 16 kHz audio samples."""

AUDIO_RATE = 16_000
MANIFEST_NAME = "manifest.json"


def shard_name(dataset: str, split: str, index: int) -> str:
    """File name of a shard's tar, e.g. ``ravdess-fold1-000000.tar``."""
    return f"{dataset}-{split}-{index:06d}.tar"


def index_name(tar_name: str) -> str:
    """File name of the DALI index beside a tar (``x.tar`` → ``x.idx``)."""
    return tar_name[: -len(".tar")] + ".idx"
