"""Reliability, untrusted files: checkpoints carrying pickled code, tars with links or paths that leave
their folder, and indexes or manifests whose numbers would make a reader seek or allocate without bound.

avdali never extracts a tar to disk: it reads members into memory (``tarfile.extractfile``, webdataset, DALI with
the ``.idx`` offsets), and ``test_no_avdali_code_extracts_tars`` keeps it that way. Member names are still checked
wherever a tar is read (``shardformat.members.iter_members``), so a crafted shard is refused by the loaders and reported by
``avdali inspect``. Covered elsewhere: a manifest naming ``../../etc/passwd``, declaring 10**12 samples or a negative
size (``test_inspect.py::test_crafted_manifest_is_a_one_line_error``).
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import os
import pathlib
import shutil
import tarfile
import tracemalloc
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from avdali import labels
from avdali import shardformat as fmt
from avdali.cli.app import app
from avdali.data.build import build_loader
from avdali.data.config import DataConfig
from avdali.data.shards import resolve
from avdali.errors import AvdaliError
from avdali.packing.writer import dumps_json
from avdali.shardformat.index import MAX_INDEX_BYTES, read_index, tar_index
from avdali.shardformat.inspect import inspect_shards
from avdali.shardformat.manifest import MAX_MANIFEST_BYTES, ShardEntry, build_manifest, read_manifest, write_manifest
from avdali.shardformat.members import encode_meta_i32
from avdali.shardformat.options import PackOptions
from avdali.train.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


# --- checkpoints -------------------------------------------------------------------------------------


class WritesMarker:
    """Unpickling this calls ``Path.write_text(marker, ...)``: code that runs on load, as a crafted checkpoint's would."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.write_text, (pathlib.Path(self.marker), "code ran")


class RunsSystem:
    """Unpickling this calls ``os.system``: the classic pickle payload."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(params=[WritesMarker, RunsSystem])
def evil_checkpoint(tmp_path, request) -> tuple[Path, Path]:
    """A checkpoint shaped like avdali's (model weights, config) with a payload hidden among them, and its marker."""
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "config": {}, "step": 3, "extra": request.param(marker)}, path)
    return path, marker


REFUSED = "refused: the file holds pickled Python objects"


def test_load_checkpoint_refuses_pickled_code(evil_checkpoint):
    path, marker = evil_checkpoint
    with pytest.raises(AvdaliError, match=f"{path.name}: {REFUSED}") as error:
        load_checkpoint(path)
    assert "\n" not in str(error.value)
    assert not marker.exists(), "the payload ran"
    # the same bytes without weights_only would run it: the marker proves the fixture is a real payload
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_eval_and_predict_refuse_pickled_code(evil_checkpoint, ravdess_shards, tmp_path):
    path, marker = evil_checkpoint
    for args in (["eval", "-k", str(path), "--shards", str(ravdess_shards), "--device", "cpu"],
                 ["predict", str(tmp_path / "clip.mp4"), "-k", str(path), "--device", "cpu"]):  # fmt: skip
        result = runner.invoke(app, args)
        assert result.exit_code == 1 and REFUSED in result.output and "Traceback" not in result.output, result.output
    assert not marker.exists(), "the payload ran"


def test_train_resume_refuses_pickled_code(evil_checkpoint, ravdess_shards, tmp_path):
    from conftest import tiny_run_toml

    path, marker = evil_checkpoint
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.toml").write_text(tiny_run_toml(ravdess_shards))
    shutil.copy(path, run_dir / "last.pt")
    result = runner.invoke(app, ["train", "--resume", "--run-dir", str(run_dir)])
    assert result.exit_code == 1, result.output
    assert f"last.pt: {REFUSED}" in result.output and "Traceback" not in result.output
    assert not marker.exists(), "the payload ran"
    assert (run_dir / "last.pt").read_bytes() == path.read_bytes()


def _calls(name_of_call):
    """(file, line, ast.Call) of every call in avdali's sources whose callee ``name_of_call`` picks."""
    for source in sorted((REPO / "avdali").rglob("*.py")):
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
                if name_of_call(name, func):
                    yield source.relative_to(REPO), node.lineno, node


def test_every_torch_load_is_weights_only():
    def is_torch_load(name, func):
        return (name == "load" and isinstance(func, ast.Attribute) and ast.unparse(func.value) == "torch") or name == "load_state_dict_from_url"

    found = list(_calls(is_torch_load))
    assert found, "no torch.load call found: the scan is broken"
    for source, line, call in found:
        weights_only = [k for k in call.keywords if k.arg == "weights_only"]
        assert weights_only and ast.literal_eval(weights_only[0].value) is True, f"{source}:{line} loads without weights_only=True"


def test_no_avdali_code_extracts_tars():
    """avdali reads tar members into memory and never writes them to disk, so no member name can land outside a folder."""
    writers = {"extractall", "extract", "unpack_archive", "_extract_member", "makelink", "makefile"}
    found = [f"{s}:{line}" for s, line, _ in _calls(lambda name, func: name in writers)]
    assert not found, f"tar extraction in {found}"
    assert any(True for _ in _calls(lambda name, func: name == "extractfile")), "the scan is broken: extractfile is used"


# --- crafted shard folders ------------------------------------------------------------------------------

KEY = "k0"
LABEL = 3
OPTIONS = PackOptions(size=128, fps=15, max_seconds=4.0, shard_size=4, workers=1)
SHARD = fmt.shard_name("ravdess", "fold1", 0)


def good_members(frames: int = 5) -> list[tuple[str, bytes]]:
    meta = {"key": KEY, "split": "fold1", "label": LABEL, "frames": frames, "audio_samples": 9}
    nums = encode_meta_i32({"frames": frames, "label": LABEL, "native_label": LABEL, "audio_samples": 9})
    return [(f"{KEY}.cls", str(LABEL).encode()), (f"{KEY}.flac", b"f" * 700), (f"{KEY}.json", dumps_json(meta)),
            (f"{KEY}.meta.i32", nums), (f"{KEY}.webm", b"\x1a\x45\xdf\xa3" + b"w" * 1500)]  # fmt: skip


def make_tar(members: list[tarfile.TarInfo | tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
            else:
                info = tarfile.TarInfo(member[0])
                info.size = len(member[1])
                tar.addfile(info, io.BytesIO(member[1]))
    return buffer.getvalue()


def link(name: str, target: str, kind=tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def folder(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return info


def clean_index(scratch: Path, frames: int = 5) -> str:
    """The packer's index of the good sample alone (what a crafted tar's index shows when it hides a member)."""
    scratch.write_bytes(make_tar(good_members(frames)))
    try:
        return tar_index(scratch)
    finally:
        scratch.unlink()


def crafted_folder(root: Path, tar_bytes: bytes, idx_text: str | None = None) -> Path:
    """A shard folder holding one tar whose manifest entry (sha256, size, keys, labels) vouches for exactly these
    bytes, so only the tar's content or its index can be what a reader refuses. The index is the packer's index of
    the good sample unless ``idx_text`` is given."""
    root.mkdir(parents=True)
    (root / SHARD).write_bytes(tar_bytes)
    if idx_text is None:
        idx_text = clean_index(root / "clean.tar")
    (root / fmt.index_name(SHARD)).write_text(idx_text)
    entry = ShardEntry(name=SHARD, index_name=fmt.index_name(SHARD), samples=1, keys=[KEY], sha256=hashlib.sha256(tar_bytes).hexdigest(),
                       bytes=len(tar_bytes), split="fold1", labels={labels.UNIFIED[LABEL]: 1}, faces={"detected": 1})  # fmt: skip
    options = {**OPTIONS.content_options(), "workers": 1, "strict": False}
    write_manifest(root, build_manifest("ravdess", options, [entry], ["fold1"], [], complete=True))
    return root


def assert_refused(shards: Path, *fragments: str) -> None:
    """The loader build and ``avdali inspect`` both refuse the folder, naming the file and the problem."""
    with pytest.raises(AvdaliError) as error:
        build_loader(DataConfig(shards=str(shards), loader="torch", num_threads=1), ["fold1"], train=False)
    message = str(error.value)
    assert "\n" not in message and all(f in message for f in fragments), message
    problems = inspect_shards(shards, decode_per_split=0).problems
    assert any(all(f in p for f in fragments[1:]) for p in problems), problems
    result = runner.invoke(app, ["inspect", str(shards), "--decode", "0"])
    assert result.exit_code == 1 and "Traceback" not in result.output


def test_crafted_folder_control_passes(tmp_path):
    """The crafting itself is sound: without a bad member the same folder resolves and inspects clean."""
    shards = crafted_folder(tmp_path / "shards", make_tar(good_members()))
    shardset = resolve(shards, ["fold1"])
    assert shardset.num_samples == 1 and shardset.files[0].keys == (KEY,)
    report = inspect_shards(shards, decode_per_split=0)
    assert report.ok, report.problems


BAD_MEMBERS = {
    "symlink_out": (link("k1.webm", "../../../../etc/passwd"), "'k1.webm' is a symlink"),
    "symlink_abs": (link("k1.webm", "/etc/passwd"), "'k1.webm' is a symlink"),
    "hardlink": (link("k1.webm", "/etc/passwd", tarfile.LNKTYPE), "'k1.webm' is a hard link"),
    "dotdot": (("../escape.webm", b"x" * 10), "'../escape.webm' has a path"),
    "absolute": (("/tmp/avdali-escape.webm", b"x" * 10), "'/tmp/avdali-escape.webm' has a path"),
    "subfolder": (("sub/k1.webm", b"x" * 10), "'sub/k1.webm' has a path"),
    "folder": (folder("sub"), "'sub' is a folder"),
    "hidden": ((".k1.webm", b"x" * 10), "'.k1.webm' starts with a dot"),
}


@pytest.mark.parametrize("case", sorted(BAD_MEMBERS))
def test_tar_with_links_or_paths_is_refused(tmp_path, case):
    member, fragment = BAD_MEMBERS[case]
    workdir = tmp_path / "work"
    workdir.mkdir()
    shards = crafted_folder(workdir / "shards", make_tar(good_members() + [member]))
    before = {p for p in tmp_path.rglob("*")}
    assert_refused(shards, SHARD, "refused", fragment)
    assert {p for p in tmp_path.rglob("*")} == before  # nothing was written anywhere near (or outside) the folder
    assert not Path("/tmp/avdali-escape.webm").exists()


@pytest.mark.parametrize(
    "name, fragment",
    [("../k0.webm", "has a path"), ("/abs/k0.webm", "has a path"), ("k0.webm\x1b", "has a control character"), ("k0.flac", "does not end in its ext")],
)
def test_index_naming_paths_is_refused(tmp_path, name, fragment):
    clean = tmp_path / "clean.tar"
    clean.write_bytes(make_tar(good_members()))
    idx = tar_index(clean).replace(f" {KEY}.webm", f" {name}")
    shards = crafted_folder(tmp_path / "shards", clean.read_bytes(), idx)
    with pytest.raises(AvdaliError, match=f"{fmt.index_name(SHARD)}: line 2: member name") as error:
        resolve(shards, ["fold1"])
    assert fragment in str(error.value)
    assert any(f"{fmt.index_name(SHARD)}: does not match" in p for p in inspect_shards(shards, decode_per_split=0).problems)


# --- sizes read from files ------------------------------------------------------------------------------


def peak_mb(fn) -> tuple[float, str]:
    """Peak Python heap (MB) while ``fn()`` runs and raises AvdaliError (its message is returned as well)."""
    tracemalloc.start()
    try:
        with pytest.raises(AvdaliError) as error:
            fn()
        return tracemalloc.get_traced_memory()[1] / 1e6, str(error.value)
    finally:
        tracemalloc.stop()


def test_index_offsets_past_the_tar_are_refused_before_any_read(tmp_path):
    clean = tmp_path / "clean.tar"
    clean.write_bytes(make_tar(good_members()))
    lines = tar_index(clean).splitlines()
    parts = lines[1].split()
    webm = parts.index(f"{KEY}.webm")
    parts[webm - 2], parts[webm - 1] = "512", str(2**62)  # a huge webm: reading it would try to allocate 4 EiB
    shards = crafted_folder(tmp_path / "shards", clean.read_bytes(), "\n".join([lines[0], " ".join(parts)]) + "\n")
    peak, message = peak_mb(lambda: build_loader(DataConfig(shards=str(shards), loader="torch", num_threads=1), ["fold1"], train=False))
    assert f"at 512+{2**62} lies past the end of the" in message
    assert peak < 5


def test_index_declaring_millions_of_samples_is_refused_unread(tmp_path):
    clean = tmp_path / "clean.tar"
    clean.write_bytes(make_tar(good_members()))
    body = tar_index(clean).split("\n", 1)[1]
    shards = crafted_folder(tmp_path / "shards", clean.read_bytes(), f"v1.2 50000000\n{body}")
    peak, message = peak_mb(lambda: resolve(shards, ["fold1"]))
    assert "declares 50000000 samples, the manifest lists 1" in message and peak < 5
    with pytest.raises(AvdaliError, match="header says 50000000 samples, found 1 lines"):
        read_index(shards / fmt.index_name(SHARD))


def test_oversized_index_and_manifest_are_refused_unread(tmp_path):
    shards = crafted_folder(tmp_path / "shards", make_tar(good_members()))
    idx = shards / fmt.index_name(SHARD)
    with open(idx, "r+b") as f:
        f.truncate(MAX_INDEX_BYTES + 1)  # sparse: no disk used, but reading it would cost 64 MB
    peak, message = peak_mb(lambda: resolve(shards, ["fold1"]))
    assert f"{MAX_INDEX_BYTES + 1} bytes is larger than any shard index" in message and peak < 5
    with open(shards / "manifest.json", "r+b") as f:
        f.truncate(MAX_MANIFEST_BYTES + 1)
    peak, message = peak_mb(lambda: read_manifest(shards))
    assert "is larger than any manifest avdali writes" in message and peak < 5


def test_tar_with_too_many_members_stops_early(tmp_path):
    """A tar of 20,000 empty members behind a manifest that lists one sample: the header scan stops after the five
    members one sample has, instead of collecting all of them."""
    members = good_members() + [(f"x{i:05d}.cls", b"") for i in range(20_000)]
    shards = crafted_folder(tmp_path / "shards", make_tar(members))  # its index hides the extra members
    peak, message = peak_mb(lambda: resolve(shards, ["fold1"]))
    assert f"{SHARD}: refused: more than 5 members" in message and peak < 5


@pytest.mark.parametrize(
    "options, fragment",
    [
        ({"size": 10**9}, "--size must be ≤ 4096"),
        ({"size": "128"}, "options.size/shard_size are not integers"),
        ({"max_seconds": 1e12}, "--max-seconds must be > 0 and ≤ 3600"),
        ({"fps": float("nan")}, "--fps must be between 1 and 60"),
        ({"size": None, "fps": None}, "not integers"),
    ],
)
def test_manifest_options_are_checked(tmp_path, options, fragment):
    shards = crafted_folder(tmp_path / "shards", make_tar(good_members()))
    d = json.loads((shards / "manifest.json").read_text())
    d["options"].update(options)
    (shards / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(AvdaliError, match="manifest.json: ") as error:
        read_manifest(shards)
    assert fragment in str(error.value)


def test_manifest_keys_must_be_plain_names(tmp_path):
    shards = crafted_folder(tmp_path / "shards", make_tar(good_members()))
    d = json.loads((shards / "manifest.json").read_text())
    d["shards"][0]["keys"] = ["../k0"]
    (shards / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(AvdaliError, match=r"shards\[0\]\.keys: '\.\./k0' is not a sample key"):
        read_manifest(shards)


@pytest.mark.parametrize("frames", [2**31 - 1, 0, -5, 61])
def test_inspect_flags_sizes_beyond_the_pack_options(tmp_path, frames):
    """meta.i32 declaring more frames than ``fps * max_seconds`` (60 here) allows, or none, is a finding."""
    shards = crafted_folder(tmp_path / "shards", make_tar(good_members(frames)), clean_index(tmp_path / "c.tar", frames))
    problems = inspect_shards(shards, decode_per_split=0).problems
    assert problems == [
        f"{SHARD}: {KEY}: meta.i32 declares {frames} frames and 9 audio samples; the pack options allow 1-61 frames and 0-64001 samples"
    ] if frames != 61 else not problems


def test_resume_redoes_a_vouched_for_shard_with_a_link(tmp_path):
    """A manifest that vouches (sha256, size, keys) for a tar holding a symlink: resuming `avdali shard` writes the
    real shard over it instead of keeping it or crashing."""
    from test_pack import fake_pack, folder_bytes

    out = tmp_path / "out"
    fake_pack(out)
    reference = folder_bytes(out)
    manifest = read_manifest(out)
    entry = manifest.shards[0]
    with tarfile.open(out / entry.name) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar]
    crafted = make_tar(members + [link("zz.webm", "/etc/passwd")])
    (out / entry.name).write_bytes(crafted)
    entry.sha256, entry.bytes = hashlib.sha256(crafted).hexdigest(), len(crafted)
    write_manifest(out, manifest)
    result = fake_pack(out)
    assert result.shards_written == 1
    assert folder_bytes(out) == reference
