"""One transcoded clip → a one-sample evaluation Batch, through the torch loader's own per-sample code.

``avdali predict`` must see a clip exactly as evaluation does. Rather than re-implement frame sampling,
centre crop and log-mel here (and let them drift), the clip is wrapped as a one-sample shard set and
handed to ``ClipStream.decode``, the function the torch loader runs on every tar sample.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from avdali import shardformat as fmt
from avdali.data.batch import Batch
from avdali.data.config import DataConfig
from avdali.data.shards import ShardSet, ShardSpan
from avdali.data.torch_loader import ClipStream

KEY = "clip"
"""Sample key of the single clip (any name works; it only ties the sample to its index)."""


def clip_batch(webm: bytes, flac: bytes, frames: int, cfg: DataConfig, *, source: str = KEY) -> Batch:
    """A Batch of one clip (the packer's webm + flac bytes, ``frames`` decoded frames) with ``cfg``'s eval transforms.

    ``label`` is 0 and meaningless (the clip is unlabelled); ``index`` 0; ``valid`` True.
    ``source`` names the clip in decode errors.
    """
    meta = np.zeros(len(fmt.META_FIELDS), dtype="<i4")
    meta[fmt.META_FIELDS.index("frames")] = frames
    shard = ShardSpan(tar=source, idx="", first=0, keys=(KEY,), video_offsets=(0,), video_sizes=(len(webm),))
    stream = ClipStream(cfg, ShardSet(Path("."), (KEY,), (shard,)), train=False, rank=0, world_size=1, seed=0,
                        frame_size=(0, 0), epoch=None)
    sample = {"__url__": source, "__key__": KEY, fmt.VIDEO_EXT: webm, fmt.AUDIO_EXT: flac, fmt.NUMS_EXT: meta.tobytes()}
    decoded = stream.decode(sample, rng=None)
    return Batch(
        video=decoded["video"].unsqueeze(0),
        audio=decoded["audio"].unsqueeze(0),
        audio_len=torch.tensor([decoded["audio_len"]], dtype=torch.int64),
        label=torch.tensor([decoded["label"]], dtype=torch.int64),
        index=torch.tensor([decoded["index"]], dtype=torch.int64),
        valid=torch.ones(1, dtype=torch.bool),
    )
