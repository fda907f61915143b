"""One transcoded clip → a one-sample evaluation Batch, through the torch loader's own per-clip kernel.

``avdali predict`` must see a clip exactly as evaluation does. Rather than re-implement frame sampling,
centre crop and log-mel here (and let them drift), the clip goes through ``decode.decode_clip``, the function
the torch loader runs on every tar sample, and, for ``data.speaker_norm``, the same speaker stage as every loader.
"""

from __future__ import annotations

import torch

from avdali.data.batch import Batch
from avdali.data.config import DataConfig
from avdali import shardformat as fmt
from avdali.data.decode import decode_clip
from avdali.data.speakers import Speaker, SpeakerNorm
from avdali.shardformat.members import encode_meta_i32


def clip_batch(
    webm: bytes, flac: bytes, frames: int, cfg: DataConfig, *, source: str = "clip", audio_present: bool = True,
    video_present: bool = True, speaker: Speaker | None = None,
) -> Batch:
    """A Batch of one clip (the packer's webm + flac bytes, ``frames`` decoded frames) with ``cfg``'s eval transforms.

    ``label`` is 0 and meaningless (the clip is unlabelled); ``index`` 0; ``valid`` True.
    ``source`` names the clip in decode errors. ``audio_present``/``video_present``: False for a stream that is a
    placeholder (``transcode_clip`` with ``keep_partial``: ``Transcoded.audio_present``/``video_present``); the
    Batch carries them as a shard sample's ``meta.i32`` would. ``speaker``: the person's statistics
    (``data.speaker_norm``).
    """
    streams = (fmt.STREAM_AUDIO if audio_present else 0) | (fmt.STREAM_VIDEO if video_present else 0)
    meta = encode_meta_i32({"frames": frames, "label": 0, "native_label": 0, "audio_samples": 0, "streams": streams})
    decoded = decode_clip(webm, flac, meta, cfg, rng=None, source=source)
    batch = Batch(
        video=decoded["video"].unsqueeze(0),
        audio=decoded["audio"].unsqueeze(0),
        audio_len=torch.tensor([decoded["audio_len"]], dtype=torch.int64),
        label=torch.tensor([decoded["label"]], dtype=torch.int64),
        index=torch.zeros(1, dtype=torch.int64),
        valid=torch.ones(1, dtype=torch.bool),
        audio_present=torch.tensor([decoded["audio_present"]], dtype=torch.bool),
        video_present=torch.tensor([decoded["video_present"]], dtype=torch.bool),
        crop_box=torch.tensor([decoded["crop_box"]], dtype=torch.int32),
        flipped=torch.tensor([decoded["flipped"]], dtype=torch.bool),
    )
    return SpeakerNorm.for_one(speaker)(batch) if cfg.speaker_norm else batch
