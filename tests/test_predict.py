"""``avdali predict``: one mp4 → probabilities through the same preprocessing as the loaders (compared with the
loader's eval batch of the same clip packed into shards), default checkpoint, pack options, bad inputs."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from avdali.cli.app import app
from avdali.data.build import build_loader
from avdali.data.shards import resolve
from avdali.infer.clip_batch import clip_batch
from avdali.errors import AvdaliError
from avdali.labels import UNIFIED
from avdali.models.avfusion import build_model
from avdali.shardformat.manifest import read_manifest
from avdali.shardformat.options import PackOptions
from avdali.train.checkpoint import save_checkpoint
from avdali.train.config_toml import load_config
from avdali.infer.load import load_model
from avdali.infer.predict import logits_of, pack_options_for, predict_clip, transcode_input

TINY = [
    "data.loader=torch", "data.frames=4", "data.crop=64", "data.n_mels=32", "data.batch_size=4", "data.num_threads=1",
    "model.audio_dim=32", "model.audio_conv_channels=[16, 32]", "model.audio_heads=2", "model.audio_layers=1",
    "model.audio_ff_dim=64", "model.video_dim=32", "model.fusion_heads=2", "model.fusion_ff_dim=64",
    "train.device=cpu", "train.amp=none", "train.compile=false", "train.channels_last=false",
]
"""A model small enough for 2 CPU cores (configs/demo.toml, narrower)."""


def make_checkpoint(path: Path, shards: Path | str, *overrides: str) -> Path:
    """An untrained model saved in the training loop's checkpoint format."""
    cfg = load_config(None, [*TINY, f'data.shards="{shards}"', *overrides])
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(cfg.model, backbone_weights="none"))
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(path, {"model": model.state_dict(), "config": cfg.to_dict(), "epoch": 1, "step": 2})


def run(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def av_clip(ravdess_src) -> Path:
    """An audio-video mp4 of the synthetic RAVDESS tree (H.264 + AAC like the real files)."""
    return sorted(ravdess_src.glob("Actor_02/01-01-*.mp4"))[0]


def test_predict_matches_the_loader_on_packed_shards(tmp_path, ravdess_shards, av_clip):
    loaded = load_model(make_checkpoint(tmp_path / "best.pt", ravdess_shards, "data.crop=96"), "cpu")
    prediction = predict_clip(loaded, av_clip)
    assert list(prediction.probabilities) == list(UNIFIED)
    assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-6)
    assert all(0 <= p <= 1 for p in prediction.probabilities.values())
    assert prediction.label == max(prediction.probabilities, key=prediction.probabilities.get)
    assert prediction.pack_options["from"].endswith("manifest.json") and prediction.pack_options["size"] == 128

    # The same clip as the torch loader's evaluation batch hands it to evaluate(), from the packed shards.
    key = av_clip.stem
    split = next(s.split for s in read_manifest(ravdess_shards).shards if key in s.keys)
    shardset = resolve(ravdess_shards, [split])
    index = next(f.first + f.keys.index(key) for f in shardset.files if key in f.keys)
    loader = build_loader(loaded.config.data.loader_config(), [split], train=False)
    batch = next(b for b in loader if (b.index == index).any())
    row = int((batch.index == index).nonzero()[0])
    reference = logits_of(loaded, batch)[row]
    torch.testing.assert_close(torch.tensor(prediction.logits), reference, rtol=1e-4, atol=1e-4)

    # and the inputs themselves: the transcode is deterministic, so pixels and features agree
    clip = transcode_input(av_clip, PackOptions(**{k: v for k, v in prediction.pack_options.items() if k != "from"}))
    single = clip_batch(clip.webm, clip.flac, clip.frames, loaded.config.data.loader_config())
    assert single.video.shape == (1, 4, 3, 96, 96) and single.video.dtype == torch.uint8
    torch.testing.assert_close(single.video[0], batch.video[row], rtol=0, atol=0)
    torch.testing.assert_close(single.audio[0], batch.audio[row], rtol=1e-5, atol=1e-5)
    assert int(single.audio_len[0]) == int(batch.audio_len[row])


def test_speaker_norm_prediction_matches_the_loader_with_the_speakers_clips(tmp_path, ravdess_shards, av_clip):
    """A data.speaker_norm checkpoint: predict needs the person's other clips; given exactly the clips packed for
    that actor, the speaker's mean frame, and so the logits, are the loader's."""
    shards = shutil.copytree(ravdess_shards, tmp_path / "shards")  # the loader caches its means in the folder
    loaded = load_model(make_checkpoint(tmp_path / "best.pt", shards, "data.speaker_norm=true"), "cpu")
    with pytest.raises(AvdaliError, match=r"trained with data\.speaker_norm .* --speaker-clips DIR"):
        predict_clip(loaded, av_clip)
    key = av_clip.stem
    split = next(s.split for s in read_manifest(shards).shards if key in s.keys)
    packed = [k for s in read_manifest(shards).shards if s.split == split for k in s.keys]
    same_person = tmp_path / "actor"
    same_person.mkdir()
    for k in packed:
        shutil.copy(av_clip.parent / f"{k}.mp4", same_person)
    prediction = predict_clip(loaded, av_clip, speaker_clips=same_person)
    assert prediction.speaker_clips == len(packed) > 1

    shardset = resolve(shards, [split])
    index = next(f.first + f.keys.index(key) for f in shardset.files if key in f.keys)
    batch = next(b for b in build_loader(loaded.config.data.loader_config(), [split], train=False)
                 if (b.index == index).any())
    reference = logits_of(loaded, batch)[int((batch.index == index).nonzero()[0])]
    torch.testing.assert_close(torch.tensor(prediction.logits), reference, rtol=1e-4, atol=1e-4)
    plain = predict_clip(load_model(make_checkpoint(tmp_path / "plain.pt", shards), "cpu"), av_clip)
    assert plain.logits != prediction.logits and plain.speaker_clips == 0

    result = run("predict", av_clip, "--checkpoint", tmp_path / "best.pt", "--speaker-clips", tmp_path / "nowhere")
    assert result.exit_code == 1 and "nowhere: --speaker-clips must be a folder" in result.output


def test_pack_options_from_manifest_or_defaults(tmp_path, ravdess_shards):
    cfg = load_config(None, [f'data.shards="{ravdess_shards}"'])
    options, origin = pack_options_for(cfg)
    assert (options.size, options.fps, options.max_seconds) == (128, 15.0, 4.0)
    assert origin == str(ravdess_shards / "manifest.json")
    options, origin = pack_options_for(load_config(None, [f'data.shards="{tmp_path / "gone"}"']))
    assert options == PackOptions() and origin == "defaults"


def test_predict_cli_default_checkpoint_and_json(tmp_path, monkeypatch, ravdess_shards, av_clip):
    monkeypatch.chdir(tmp_path)
    result = run("predict", av_clip)
    assert result.exit_code == 1 and "no checkpoint given" in result.output

    # the newest best.pt anywhere under output/ is used (here where `avdali demo` puts it, two levels deeper than
    # `avdali train`'s); its shards are gone, so the packer's defaults apply
    make_checkpoint(tmp_path / "output" / "old" / "best.pt", ravdess_shards)
    demo_best = Path("output") / "demo" / "runs" / "demo-20261129-230000" / "best.pt"
    newest = make_checkpoint(tmp_path / demo_best, tmp_path / "gone", "data.frames=3")
    os.utime(tmp_path / "output" / "old" / "best.pt", (1, 1))
    result = run("predict", av_clip, "--json", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert f"checkpoint: {demo_best} (the newest best.pt under output/)" in result.stderr
    out = json.loads(result.stdout)
    assert out["checkpoint"] == str(demo_best)
    assert Path(out["checkpoint"]).resolve() == newest.resolve()
    assert list(out["probabilities"]) == list(UNIFIED)
    assert sum(out["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
    assert out["pack_options"]["from"] == "defaults" and out["pack_options"]["size"] == PackOptions().size

    result = run("predict", av_clip, "--checkpoint", newest)
    assert result.exit_code == 0, result.output
    assert out["label"] in result.output and "probability" in result.output


def test_predict_bad_inputs(tmp_path, ravdess_shards, ravdess_src):
    ckpt = make_checkpoint(tmp_path / "best.pt", ravdess_shards)
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n")
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    video_only = sorted(ravdess_src.glob("Actor_02/02-01-*.mp4"))[0]  # RAVDESS' video-only files have no sound
    cases = {
        tmp_path / "missing.mp4": "file not found",
        tmp_path: "not a file",
        text: "not a readable video",
        empty: "zero-length clip",
        video_only: "no audio stream",
    }
    for path, message in cases.items():
        result = run("predict", path, "-k", ckpt)
        assert result.exit_code == 1, (path, result.output)
        assert message in result.output and str(path) in result.output.replace("\n", "")
        assert "Traceback" not in result.output
    with pytest.raises(AvdaliError, match="no audio stream"):
        transcode_input(video_only, PackOptions())


# --- a clip that lacks a stream (predict from the stream it has) --------------------------------------------------


@pytest.fixture(scope="module")
def partial_clips(meld_partial_src) -> dict[str, Path]:
    """kind (no_audio, no_video, black_video, black_no_audio) → the synthetic MELD clip of that kind."""
    record = json.loads((meld_partial_src / "avdali_synth.json").read_text())
    return {f["kind"]: meld_partial_src / f["path"] for f in record["faults"]}


@pytest.mark.parametrize("kind, used, missing", [
    ("no_audio", "video", {"audio": "no audio stream"}),
    ("no_video", "audio", {"video": "no video stream"}),
    ("black_video", "audio", {"video": "black video"}),
])
def test_predict_uses_the_stream_a_partial_clip_has(tmp_path, meld_partial_shards, partial_clips, kind, used, missing):
    ckpt = make_checkpoint(tmp_path / "best.pt", meld_partial_shards, "train.drop_audio=0.2", "train.drop_video=0.2")
    loaded = load_model(ckpt, "cpu")
    prediction = predict_clip(loaded, partial_clips[kind])
    assert (prediction.modality, prediction.missing) == (used, missing)
    assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-6)

    # The reference: the same clip packed with --keep-partial, as the torch loader hands it to evaluate() (its
    # meta.i32 marks the missing stream); the placeholder never reaches the prediction.
    manifest = read_manifest(meld_partial_shards)
    entry = next(e for e in manifest.shards for p in e.partial if Path(p["source"]).name == partial_clips[kind].name)
    key = next(p["key"] for p in entry.partial if Path(p["source"]).name == partial_clips[kind].name)
    shardset = resolve(meld_partial_shards, [entry.split])
    index = next(f.first + f.keys.index(key) for f in shardset.files if key in f.keys)
    loader = build_loader(loaded.config.data.loader_config(), [entry.split], train=False)
    batch = next(b for b in loader if (b.index == index).any())
    row = int((batch.index == index).nonzero()[0])
    assert (bool(batch.audio_present[row]), bool(batch.video_present[row])) == (used == "audio", used == "video")
    torch.testing.assert_close(torch.tensor(prediction.logits), logits_of(loaded, batch)[row], rtol=1e-4, atol=1e-4)


def test_predict_partial_clip_needs_a_checkpoint_trained_without_that_stream(tmp_path, meld_partial_shards, partial_clips):
    both_only = make_checkpoint(tmp_path / "plain" / "best.pt", meld_partial_shards)
    result = run("predict", partial_clips["no_audio"], "-k", both_only, "--device", "cpu")
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "no audio stream" in lines[0] and "cannot predict from the video alone" in lines[0]
    assert "train.drop_audio = 0" in lines[0]

    trained = make_checkpoint(tmp_path / "dropout" / "best.pt", meld_partial_shards, "train.drop_audio=0.2")
    result = run("predict", partial_clips["no_audio"], "-k", trained, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "from video only (no audio stream)" in result.output
    # a clip without audio cannot serve --modality both or audio; a checkpoint without drop_video cannot serve audio
    result = run("predict", partial_clips["no_audio"], "-k", trained, "--device", "cpu", "--modality", "both")
    assert result.exit_code == 1 and "--modality both needs its audio, but the clip has no audio stream" in result.output
    result = run("predict", partial_clips["no_video"], "-k", trained, "--device", "cpu")
    assert result.exit_code == 1 and "cannot predict from the audio alone" in result.output
    result = run("predict", partial_clips["no_audio"], "-k", trained, "--device", "cpu", "--modality", "sound")
    assert result.exit_code == 1 and "--modality must be one of both, audio, video" in result.output


def test_predict_modality_forces_one_stream_of_a_whole_clip(tmp_path, ravdess_shards, av_clip):
    loaded = load_model(make_checkpoint(tmp_path / "best.pt", ravdess_shards, "train.drop_audio=0.3",
                                        "train.drop_video=0.3"), "cpu")
    both, audio_only = predict_clip(loaded, av_clip), predict_clip(loaded, av_clip, modality="audio")
    assert (both.modality, audio_only.modality, audio_only.missing) == ("both", "audio", {})
    assert both.logits != audio_only.logits
    clip = transcode_input(av_clip, PackOptions(**{k: v for k, v in both.pack_options.items() if k != "from"}))
    batch = clip_batch(clip.webm, clip.flac, clip.frames, loaded.config.data.loader_config())
    torch.testing.assert_close(torch.tensor(audio_only.logits), logits_of(loaded, batch, "audio")[0])
