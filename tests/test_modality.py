"""A missing or broken stream: the model's learned missing-stream embeddings, modality dropout in training, what a
checkpoint can serve, ``avdali eval --modality`` and its robustness table, and training's ``test/audio_only/*``."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from avdali.errors import AvdaliError, ConfigError
from avdali.models.avfusion import MISSING_KEYS, build_model
from avdali.models.config import ModelConfig
from avdali.train.checkpoint import load_checkpoint, save_checkpoint
from avdali.train.config_toml import load_config
from avdali.infer.load import load_model
from avdali.train.modality import (
    MODALITIES,
    dropout_masks,
    presence,
    require_modality,
    servable_modalities,
)
from test_eval_cli import make_checkpoint, run

N, T, SIDE, F, A = 2, 3, 32, 64, 80


def small_model(**overrides) -> nn.Module:
    torch.manual_seed(0)
    sizes = dict(audio_dim=16, audio_conv_channels=(8,), audio_heads=2, audio_layers=1, audio_ff_dim=16,
                 video_dim=16, fusion_heads=2, fusion_ff_dim=16, additive_dim=8)
    return build_model(ModelConfig(**{**sizes, **overrides}))


def inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, T, 3, SIDE, SIDE, generator=g), torch.randn(N, F, A, generator=g)


FIRST_ABSENT = torch.tensor([False, True])
ALL = torch.tensor([True, True])


# --- the model ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream, fusion", [("audio", "cross"), ("video", "additive")])
def test_absent_stream_is_its_embedding_not_its_tensor(stream, fusion):
    model = small_model(fusion=fusion).eval()
    video, audio = inputs()
    other_video, other_audio = inputs(seed=1)
    absent = {f"{stream}_present": FIRST_ABSENT}
    with torch.no_grad():
        full = model(video, audio)
        all_present = model(video, audio, audio_present=ALL, video_present=ALL)
        dropped = model(video, audio, **absent)
        # sample 0's placeholder replaced by anything else: its output does not move (the tensor is not read) …
        if stream == "audio":
            replaced = model(video, torch.cat([other_audio[:1], audio[1:]]), torch.tensor([7, A]), **absent)
        else:
            replaced = model(torch.cat([other_video[:1], video[1:]]), audio, **absent)
        # … but the learned embedding is what stands in
        getattr(model, f"missing_{stream}").add_(1.0)
        moved = model(video, audio, **absent)
    torch.testing.assert_close(all_present, full, atol=0, rtol=0)
    assert not torch.allclose(dropped[0], full[0], atol=1e-4)  # the model knows the stream is gone
    torch.testing.assert_close(dropped[1], full[1])  # per sample: the present one is untouched
    torch.testing.assert_close(replaced, dropped)
    assert not torch.allclose(moved[0], dropped[0], atol=1e-4)
    torch.testing.assert_close(moved[1], dropped[1])


def test_gradient_reaches_missing_embeddings_only_when_a_stream_is_absent():
    model = small_model().train()
    video, audio = inputs()
    label = torch.tensor([1, 5])

    def grads(**present):
        model.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(video, audio, **present), label).backward()
        return {k: getattr(model, k).grad for k in MISSING_KEYS}

    none_absent = grads(audio_present=ALL, video_present=ALL)
    assert all(g is None or not g.abs().sum() > 0 for g in none_absent.values())
    audio_absent = grads(audio_present=FIRST_ABSENT, video_present=ALL)
    assert audio_absent["missing_audio"].abs().sum() > 0
    assert not audio_absent["missing_video"].abs().sum() > 0
    video_absent = grads(audio_present=ALL, video_present=FIRST_ABSENT)
    assert video_absent["missing_video"].abs().sum() > 0
    assert not video_absent["missing_audio"].abs().sum() > 0


def test_presence_mask_shape_is_checked():
    model = small_model().eval()
    video, audio = inputs()
    with pytest.raises(ValueError, match="audio_present must be bool of shape"):
        model(video, audio, audio_present=torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="video_present must be bool of shape"):
        model(video, audio, video_present=torch.ones(N))


# --- config and dropout --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.drop_audio=1.0"], "train.drop_audio must be in [0, 1), got 1.0"),
        (["train.drop_video=-0.1"], "train.drop_video must be in [0, 1), got -0.1"),
        (["train.drop_audio=0.6", "train.drop_video=0.5"], "train.drop_audio + train.drop_video must be ≤ 1"),
        (["train.drop_video=yes"], "train.drop_video must be a number"),
    ],
)
def test_dropout_config_errors(overrides, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_dropout_rates_exclusive_and_deterministic():
    n = 40_000
    ones = torch.ones(n, dtype=torch.bool)
    audio, video = dropout_masks(ones, ones, drop_audio=0.2, drop_video=0.3, seed=0, rank=0, step=5)
    assert abs((~audio).float().mean().item() - 0.2) < 0.01
    assert abs((~video).float().mean().item() - 0.3) < 0.01
    assert not (~audio & ~video).any()  # one stream at most per sample
    again = dropout_masks(ones, ones, drop_audio=0.2, drop_video=0.3, seed=0, rank=0, step=5)
    assert torch.equal(again[0], audio) and torch.equal(again[1], video)  # a resume draws the same
    for other in (dict(seed=1, rank=0, step=5), dict(seed=0, rank=1, step=5), dict(seed=0, rank=0, step=6)):
        assert not torch.equal(dropout_masks(ones, ones, drop_audio=0.2, drop_video=0.3, **other)[0], audio)
    # the draws of a step do not move the global RNG (runs without dropout stay bit-identical)
    state = torch.get_rng_state()
    dropout_masks(ones, ones, drop_audio=0.2, drop_video=0.3, seed=0, rank=0, step=7)
    assert torch.equal(torch.get_rng_state(), state)


def test_dropout_keeps_a_samples_only_stream_and_absent_stays_absent():
    n = 1000
    audio_in = torch.arange(n) % 3 != 0  # every third clip has no audio …
    video_in = torch.arange(n) % 3 != 1  # … the next one no video
    audio, video = dropout_masks(audio_in, video_in, drop_audio=0.5, drop_video=0.5, seed=3, rank=0, step=0)
    assert not (audio & ~audio_in).any() and not (video & ~video_in).any()
    assert (audio | video).all()  # never both gone
    both = audio_in & video_in
    assert 0.4 < (~audio[both]).float().mean().item() < 0.6


def test_presence_per_modality():
    audio_in, video_in = torch.tensor([True, False]), torch.tensor([True, True])
    assert [m for m in MODALITIES] == ["both", "audio", "video"]
    a, v = presence("both", audio_in, video_in)
    assert a.tolist() == [True, False] and v.tolist() == [True, True]
    a, v = presence("audio", audio_in, video_in)
    assert a.tolist() == [True, False] and v.tolist() == [False, False]
    a, v = presence("video", audio_in, video_in)
    assert a.tolist() == [False, False] and v.tolist() == [True, True]


def test_servable_modalities_rule():
    assert servable_modalities({}) == ("both",)  # a config from before modality dropout
    assert servable_modalities({"train": {"drop_audio": 0.0, "drop_video": 0.0}}) == ("both",)
    assert servable_modalities({"train": {"drop_audio": 0.2}}) == ("both", "video")
    assert servable_modalities({"train": {"drop_video": 0.2}}) == ("both", "audio")
    assert servable_modalities(load_config(None, ["train.drop_audio=0.1", "train.drop_video=0.1"]).to_dict()) == MODALITIES
    require_modality("x.pt", {}, "both")
    with pytest.raises(AvdaliError) as e:
        require_modality("run/best.pt", {"train": {"drop_audio": 0.3}}, "audio")
    text = str(e.value)
    assert text.startswith("run/best.pt: cannot serve --modality audio") and "train.drop_video" in text and "\n" not in text
    with pytest.raises(AvdaliError, match="--modality must be one of both, audio, video, got 'sound'"):
        require_modality("x.pt", {}, "sound")


# --- avdali eval --------------------------------------------------------------------------------------------


def _reference(ckpt, shards, split: str) -> dict[str, tuple[float, float]]:
    """Single-stream (accuracy, mean cross-entropy) from our own loop over a fresh loader, the removed stream replaced by noise (which
    must not matter)."""
    from avdali.data.build import build_loader
    from avdali.data.normalize import prepare_video

    loaded = load_model(ckpt, "cpu")
    data_cfg = loaded.config.data.loader_config()
    data_cfg.shards = str(shards)
    correct, loss, total = {"audio": 0, "video": 0}, {"audio": 0.0, "video": 0.0}, 0
    for batch in build_loader(data_cfg, [split], train=False):
        video, audio = prepare_video(batch.video), batch.audio
        yes = torch.ones(len(batch), dtype=torch.bool)
        keep = batch.valid.bool()
        with torch.no_grad():
            inputs_of = {"audio": (torch.randn_like(video), audio, yes, ~yes),
                         "video": (video, torch.randn_like(audio), ~yes, yes)}
            for modality in correct:
                v, a, audio_present, video_present = inputs_of[modality]
                logits = loaded.model(v, a, batch.audio_len, audio_present=audio_present, video_present=video_present)
                correct[modality] += int((logits.argmax(1)[keep] == batch.label[keep]).sum())
                loss[modality] += float(nn.functional.cross_entropy(logits[keep], batch.label[keep], reduction="sum"))
        total += int(keep.sum())
    return {m: (correct[m] / total, loss[m] / total) for m in correct}


@pytest.mark.slow  # two evaluations and two reference passes: ~40 s on 2 shared cores
def test_eval_modality_and_robustness_table(tmp_path, ravdess_shards):
    ckpt = make_checkpoint(tmp_path / "run" / "best.pt", ravdess_shards, "train.drop_audio=0.2", "train.drop_video=0.2",
                           "data.fold=2")
    # untrained embeddings are ~0: push them apart so that a single stream's predictions differ from both streams'
    state = load_checkpoint(ckpt)
    state["model"]["missing_audio"] += 3.0
    state["model"]["missing_video"] -= 3.0
    save_checkpoint(ckpt, state)

    out = tmp_path / "all.json"
    result = run("eval", "-k", ckpt, "-s", ravdess_shards, "--json", out)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["modality"] == "both" and set(report["robustness"]) == set(MODALITIES)
    assert report["robustness"]["both"] == report["metrics"]  # the top level stays "both"
    for text in ("robustness", "audio only", "video only"):
        assert text in result.output

    reference = _reference(ckpt, ravdess_shards, "fold2")
    for modality in ("audio", "video"):
        acc, loss = reference[modality]
        assert report["robustness"][modality]["acc"] == pytest.approx(acc)
        assert report["robustness"][modality]["loss"] == pytest.approx(loss, rel=1e-5)
        assert loss != pytest.approx(report["metrics"]["loss"], rel=1e-3)  # a stream removed changes the outputs

    single = tmp_path / "audio.json"
    result = run("eval", "-k", ckpt, "-s", ravdess_shards, "--modality", "audio", "--json", single)
    assert result.exit_code == 0, result.output
    alone = json.loads(single.read_text())
    assert alone["modality"] == "audio" and list(alone["robustness"]) == ["audio"]
    assert alone["metrics"] == report["robustness"]["audio"]  # one pass for all = one pass each
    assert (ckpt.parent / "best-ravdess-fold2-audio-confusion.png").is_file()
    assert "(audio only)" in result.output and "robustness" not in result.output


def test_eval_modality_the_checkpoint_cannot_serve(tmp_path, ravdess_shards):
    ckpt = make_checkpoint(tmp_path / "best.pt", ravdess_shards, "train.drop_video=0.3")
    result = run("eval", "-k", ckpt, "-s", ravdess_shards, "--modality", "video")
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot serve --modality video" in lines[0] and "train.drop_audio" in lines[0]
    result = run("eval", "-k", ckpt, "-s", ravdess_shards, "--modality", "sound")
    assert result.exit_code == 1 and "--modality must be one of both, audio, video, got 'sound'" in result.output


def test_old_checkpoint_without_missing_embeddings_still_evaluates(tmp_path, ravdess_shards):
    new = make_checkpoint(tmp_path / "new.pt", ravdess_shards)
    state = load_checkpoint(new)
    for key in MISSING_KEYS:
        del state["model"][key]
    for key in ("drop_audio", "drop_video"):
        del state["config"]["train"][key]  # as written before the keys existed
    old = save_checkpoint(tmp_path / "old.pt", state)
    assert load_model(old, "cpu").modalities == ("both",)

    reports = {}
    for name, path in (("new", new), ("old", old)):
        out = tmp_path / f"{name}.json"
        result = run("eval", "-k", path, "-s", ravdess_shards, "--json", out)
        assert result.exit_code == 0, result.output
        reports[name] = json.loads(out.read_text())
    assert reports["old"]["metrics"] == reports["new"]["metrics"]
    assert list(reports["old"]["robustness"]) == ["both"]
    assert "audio only: not trained for it (train.drop_video = 0)" in " ".join(result.output.split())
    result = run("eval", "-k", old, "-s", ravdess_shards, "--modality", "audio")
    assert result.exit_code == 1 and "cannot serve --modality audio" in result.output


# --- training ----------------------------------------------------------------------------------------------


@pytest.mark.slow  # a one-epoch run and one evaluation: ~30 s on 2 shared cores
def test_training_with_modality_dropout_reports_each_modality(tmp_path, ravdess_shards):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from avdali.train.run import run_training
    from conftest import tiny_run_toml

    toml = tmp_path / "tiny.toml"
    toml.write_text(tiny_run_toml(ravdess_shards, train='device = "cpu"\nepochs = 1\nlog_every = 1\n'
                                  "drop_audio = 0.3\ndrop_video = 0.3"))
    run_dir = tmp_path / "run"
    result = run_training(load_config(toml, [f'train.run_dir="{run_dir}"']))
    assert set(result.robustness) == set(MODALITIES)
    assert result.robustness["both"] == result.test

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for prefix in ("test", "test/audio_only", "test/video_only"):
        assert {f"{prefix}/acc", f"{prefix}/ua", f"{prefix}/weighted_f1"} <= tags, prefix
        assert f"{prefix}/confusion" in acc.Tags()["images"]
    assert acc.Scalars("test/audio_only/acc")[-1].value == pytest.approx(result.robustness["audio"]["acc"])

    # avdali eval on best.pt reproduces each modality's numbers
    out = tmp_path / "eval.json"
    cli = run("eval", "-k", run_dir / "best.pt", "-s", ravdess_shards, "--json", out)
    assert cli.exit_code == 0, cli.output
    robustness = json.loads(out.read_text())["robustness"]
    for modality in MODALITIES:
        for key in ("acc", "ua", "weighted_f1", "loss", "num_samples"):
            assert robustness[modality][key] == pytest.approx(result.robustness[modality][key], rel=1e-5), (modality, key)
