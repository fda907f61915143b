"""Are these shards the bytes the packer wrote? SHA-256 of each tar against ``manifest.json``.

``data/shards.py`` already refuses a tar whose size or member headers differ from the manifest and the index
(cheap: a ``stat`` and ~512 bytes per member). Bytes flipped inside member data pass those checks and then
either fail in a decoder, with a message that often names no file (DALI: "Failed to send packet to decoder"),
or decode to garbage silently (a flipped label in ``meta.i32``). So the loaders check a rank's tars here when
they are built (``data.verify``), and again after a read fails, to name the shard that changed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

from avdali import shardformat as fmt
from avdali.data.shards import ShardSet
from avdali.errors import AvdaliError
from avdali.files import file_sha256
from avdali.shardformat import MANIFEST_NAME

_digests: dict[tuple[str, int, int, int], str] = {}
"""SHA-256 per (path, inode, size, mtime_ns): train, val and test loaders of one run hash each tar once."""


def _sha256(path: str) -> str:
    st = os.stat(path)
    key = (path, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _digests:
        _digests[key] = file_sha256(Path(path))
    return _digests[key]


def changed_shards(shardset: ShardSet, tars: Iterable[str]) -> list[str]:
    """Those of ``tars`` whose SHA-256 (or presence) differs from what ``manifest.json`` records (as the shard set
    read it when the loader was built: the manifest is not read again per check, nor in every DataLoader worker)."""
    recorded = {span.tar: span.entry.sha256 for span in shardset.files}
    changed = []
    for tar in tars:
        try:
            if _sha256(tar) != recorded.get(tar):
                changed.append(tar)
        except OSError:
            changed.append(tar)  # vanished or unreadable since the loader was built
    return changed


def verify_shards(shardset: ShardSet, tars: Sequence[str]) -> None:
    """AvdaliError naming the first of ``tars`` that is not the packer's bytes (reads every byte of them)."""
    changed = changed_shards(shardset, tars)
    if changed:
        raise AvdaliError(
            f"{changed[0]}: sha256 differs from {Path(shardset.root) / MANIFEST_NAME} (flipped bytes or a replaced file"
            f"{f'; {len(changed) - 1} more shard(s) too' if len(changed) > 1 else ''}); "
            f"check the folder with `avdali inspect {shardset.root}` and re-pack"
        )


def read_failure(shardset: ShardSet, tars: Sequence[str], loader: str, detail: str) -> AvdaliError:
    """The one-line error for a read that failed mid-epoch: the changed shard when one is found, else this rank's
    shards (those named in ``detail`` when it names any)."""
    detail = " ".join(detail.split())[:300]
    changed = changed_shards(shardset, tars)
    if changed:
        more = f" ({len(changed) - 1} more shard(s) changed too)" if len(changed) > 1 else ""
        return AvdaliError(
            f"{changed[0]}: corrupt shard, its sha256 differs from the manifest{more}; the {loader} loader failed "
            f"reading it ({detail}); check the folder with `avdali inspect {shardset.root}` and re-pack"
        )
    named = [t for t in tars if t in detail] or list(tars)
    return AvdaliError(
        f"{named[0]}{f' (or one of {len(named) - 1} more shards of this rank)' if len(named) > 1 else ''}: "
        f"the {loader} loader failed reading it ({detail}); check the folder with `avdali inspect {shardset.root}`"
    )


def frame_count_mismatch(shardset: ShardSet, tars: Sequence[str]) -> AvdaliError | None:
    """The error naming the first sample of ``tars`` whose ``meta.i32`` frame count is more than its webm holds
    (what a decoder reports as a frame index past the video), or None. Decodes every webm of ``tars``: run it only
    after a read failed."""
    from avdali.shardformat.members import decode_meta_i32, read_members
    from avdali.shardformat.probe import count_webm_frames

    for tar in tars:
        members: dict[str, dict[str, bytes]] = {}
        for key, ext, data in read_members(Path(tar)):
            members.setdefault(key, {})[ext] = data
        for key, sample in members.items():
            try:
                said = decode_meta_i32(sample[fmt.NUMS_EXT])["frames"]
                held = count_webm_frames(sample[fmt.VIDEO_EXT])
            except Exception as e:  # noqa: BLE001 - PyAV and the meta decoder raise several types on damaged data
                return AvdaliError(f"{tar}: sample {key}: unreadable ({' '.join(str(e).split())[:200]}); "
                                   f"check the folder with `avdali inspect {shardset.root}` and re-pack")
            if said > held:
                return AvdaliError(
                    f"{tar}: sample {key}: meta.i32 says {said} frames, its video holds {held} frames (corrupt shard?); "
                    f"check the folder with `avdali inspect {shardset.root}` and re-pack"
                )
    return None
