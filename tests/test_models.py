"""AVFusionModel and its parts: shapes, masks that really mask, per-sample independence, gradients,
the additive formula, the BiLSTM against torch's packed reference, backbone weights and config checks."""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision
from torch import nn

from avdali.errors import AvdaliError, ConfigError
from avdali.models.audio import MaskedBiLSTM, sinusoidal_positions
from avdali.models.avfusion import MISSING_KEYS, AVFusionModel, build_model
from avdali.models.config import ModelConfig
from avdali.models.fusion import AdditiveAttentionFusion
from avdali.models.video import build_backbone

N, T, SIDE, F, A = 2, 4, 64, 64, 100
ATOL = 1e-5


def small_config(**overrides) -> ModelConfig:
    """Everything but the ResNet18 shrunk, so a test runs in a fraction of a second on 2 cores."""
    sizes = dict(
        audio_dim=32, audio_conv_channels=(16, 32), audio_heads=2, audio_layers=1, audio_ff_dim=32,
        video_dim=32, fusion_heads=4, fusion_ff_dim=32, additive_dim=16,
    )
    return ModelConfig(**{**sizes, **overrides})


def inputs(n: int = N, t: int = T, frames: int = A, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, t, 3, SIDE, SIDE, generator=g), torch.randn(n, F, frames, generator=g)


def eval_model(**overrides) -> AVFusionModel:
    torch.manual_seed(0)
    return build_model(small_config(**overrides)).eval()


@pytest.mark.parametrize("fusion", ["cross", "additive"])
@pytest.mark.parametrize("num_classes", [7, 8])
def test_logits_shape(fusion, num_classes):
    model = eval_model(fusion=fusion, num_classes=num_classes)
    video, audio = inputs()
    with torch.no_grad():
        logits = model(video, audio, torch.tensor([A, 37]), torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool))
    assert logits.shape == (N, num_classes)
    assert torch.isfinite(logits).all()


def test_default_config_shapes_and_sizes():
    torch.manual_seed(0)
    model = build_model(ModelConfig()).eval()
    counts = model.parameter_counts()
    assert counts["video_backbone"] == 11_176_512  # torchvision resnet18 without fc
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total")
    video, audio = inputs()
    with torch.no_grad():
        assert model(video, audio).shape == (N, 7)


@pytest.mark.parametrize("fusion", ["cross", "additive"])
def test_masked_frames_are_ignored(fusion):
    """Masked frames may be anywhere and hold anything: the output equals each sample run on its real frames alone."""
    model = eval_model(fusion=fusion)
    video, audio = inputs(t=5)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 1, 1, 0]], dtype=torch.bool)
    garbage = video.clone()
    garbage[~mask] = torch.randn(int((~mask).sum()), 3, SIDE, SIDE) * 100
    with torch.no_grad():
        batched = model(garbage, audio, video_mask=mask)
        for i in range(N):
            alone = model(video[i : i + 1, mask[i]], audio[i : i + 1])
            torch.testing.assert_close(batched[i : i + 1], alone, atol=ATOL, rtol=0)


@pytest.mark.parametrize("fusion", ["cross", "additive"])
def test_padded_audio_is_ignored(fusion):
    """Audio beyond audio_len (garbage) changes nothing: the output equals the sample's unpadded audio alone."""
    model = eval_model(fusion=fusion)
    video, audio = inputs()
    audio_len = torch.tensor([A, 61])  # 61: odd, so the pooling's trailing partial window is exercised
    garbage = audio.clone()
    garbage[1, :, 61:] = torch.randn(F, A - 61) * 100
    with torch.no_grad():
        batched = model(video, garbage, audio_len)
        for i in range(N):
            alone = model(video[i : i + 1], audio[i : i + 1, :, : int(audio_len[i])])
            torch.testing.assert_close(batched[i : i + 1], alone, atol=ATOL, rtol=0)


def test_sample_does_not_depend_on_batch_mates():
    model = eval_model()
    video, audio = inputs(n=3, seed=1)
    audio_len = torch.tensor([A, 40, 77])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [0, 1, 1, 1]], dtype=torch.bool)
    other_video, other_audio = inputs(n=3, seed=2)
    with torch.no_grad():
        batched = model(video, audio, audio_len, mask)
        # Same first sample, different batch mates (and their masks/lengths).
        mixed = model(
            torch.cat([video[:1], other_video[1:]]),
            torch.cat([audio[:1], other_audio[1:]]),
            torch.tensor([A, 5, 99]),
            torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 0, 0]], dtype=torch.bool),
        )
        for i in range(3):
            alone = model(video[i : i + 1], audio[i : i + 1], audio_len[i : i + 1], mask[i : i + 1])
            torch.testing.assert_close(batched[i], alone[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(batched[0], mixed[0], atol=ATOL, rtol=0)


def test_sample_without_real_frames_or_audio_stays_finite():
    model = eval_model()
    video, audio = inputs()
    with torch.no_grad():
        logits = model(video, audio, torch.tensor([0, A]), torch.zeros(N, T, dtype=torch.bool))
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("fusion", ["cross", "additive"])
def test_gradients_reach_every_parameter(fusion):
    torch.manual_seed(0)
    model = build_model(small_config(fusion=fusion)).train()
    video, audio = inputs()
    logits = model(video, audio, torch.tensor([A, 50]), torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]], dtype=torch.bool))
    nn.functional.cross_entropy(logits, torch.tensor([1, 5])).backward()
    without = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert without == list(MISSING_KEYS)  # both streams present: the missing-stream embeddings are not read


def test_frozen_backbone_gets_no_gradients_and_keeps_its_statistics():
    torch.manual_seed(0)
    model = build_model(small_config(freeze_backbone=True)).train()
    assert not model.video.backbone.training and model.audio.training
    before = model.video.backbone.bn1.running_mean.clone()
    video, audio = inputs()
    model(video, audio).sum().backward()
    assert all(p.grad is None for p in model.video.backbone.parameters())
    assert all(p.grad is not None for p in model.video.lstm.parameters())
    torch.testing.assert_close(model.video.backbone.bn1.running_mean, before)


def test_masked_bilstm_matches_packed_bidirectional_lstm():
    torch.manual_seed(0)
    reference = nn.LSTM(5, 6, batch_first=True, bidirectional=True)
    ours = MaskedBiLSTM(5, 6)
    with torch.no_grad():
        for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
            getattr(ours.forward_lstm, name).copy_(getattr(reference, name))
            getattr(ours.backward_lstm, name).copy_(getattr(reference, f"{name}_reverse"))
    x = torch.randn(3, 7, 5)
    lengths = torch.tensor([7, 3, 5])
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    expected, _ = nn.utils.rnn.pad_packed_sequence(reference(packed)[0], batch_first=True, total_length=7)
    got = ours(x, lengths)
    valid = torch.arange(7) < lengths[:, None]
    torch.testing.assert_close(got[valid], expected[valid], atol=1e-6, rtol=0)


def test_additive_fusion_matches_the_formula():
    torch.manual_seed(0)
    cfg = small_config(fusion="additive", audio_dim=4, video_dim=6, additive_dim=3, fusion_heads=1)
    fusion = AdditiveAttentionFusion(cfg)
    audio = torch.randn(2, 4)
    video = torch.randn(2, 5, 6)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 0, 1, 1, 0]], dtype=torch.bool)
    got = fusion(audio, video, mask)
    wv, bv, wa = fusion.video_proj.weight, fusion.video_proj.bias, fusion.audio_proj.weight
    for n in range(2):
        real = [t for t in range(5) if mask[n, t]]
        # alpha_t = softmax over real t of mean_k tanh(Wv·v_t + Wa·a)
        scores = torch.stack([torch.tanh(wv @ video[n, t] + bv + wa @ audio[n]).mean() for t in real])
        alpha = torch.exp(scores) / torch.exp(scores).sum()
        expected = sum(video[n, t] * (1 + alpha[j]) for j, t in enumerate(real)) / len(real)
        torch.testing.assert_close(got[n], expected, atol=1e-6, rtol=0)


def test_sinusoidal_positions_match_the_formula():
    code = sinusoidal_positions(5, 8)
    pos, i = 3, 2  # dims 2i and 2i+1
    angle = torch.tensor(pos / 10000 ** (2 * i / 8))
    torch.testing.assert_close(code[pos, 2 * i], torch.sin(angle))
    torch.testing.assert_close(code[pos, 2 * i + 1], torch.cos(angle))


def test_bf16_autocast_forward_and_backward():
    torch.manual_seed(0)
    model = build_model(small_config())
    video, audio = inputs()
    with torch.no_grad():
        reference = model.eval()(video, audio, torch.tensor([A, 50]))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(video, audio, torch.tensor([A, 50]))
    torch.testing.assert_close(low.float(), reference, atol=0.1, rtol=0.05)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(video, audio, torch.tensor([A, 50]))
    logits.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


PROMOTE_OPS = ("scatter_add", "index_put", "index_put_")
"""Autocast "promote" ops that autograd puts in backward graphs (of gather and of indexing)."""


def test_compiled_backward_has_no_low_precision_promote_ops():
    """torch.compile traces the backward inside the forward's autocast region; there CUDA bf16 autocast fails
    on any "promote" op with bf16 operands (pytorch/pytorch#132715, seen on an H100 with `avdali train`).
    CPU autocast does not fail on it, so this reads the captured backward graphs instead: every promote op
    must work in float32."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    graphs = []

    def capture(gm, _example_inputs):
        graphs.append(gm)
        return make_boxed_func(gm.forward)

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = build_model(small_config()).train()
    compiled = torch.compile(model, backend=aot_autograd(fw_compiler=capture, bw_compiler=capture))
    video, audio = inputs()
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 1, 1]], dtype=torch.bool)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = compiled(video, audio, torch.tensor([A, 50]), video_mask=mask)
    logits.float().sum().backward()
    promote = [node for gm in graphs for node in gm.graph.nodes
               if node.op == "call_function" and getattr(node.target, "__name__", "").split(".")[0] in PROMOTE_OPS]
    assert promote, "no gather/indexing backward captured: the check would pass vacuously"
    low = [f"{node.target} {node.meta['val'].dtype}" for node in promote if node.meta["val"].dtype != torch.float32]
    assert not low, f"low-precision promote ops in the compiled graphs: {low}"


def test_bad_inputs_give_clear_errors():
    model = eval_model()
    video, audio = inputs()
    with pytest.raises(ValueError, match="prepare_video"):
        model((video * 50).to(torch.uint8), audio)
    with pytest.raises(ValueError, match="audio_features = 64"):
        model(video, audio[:, :13])
    with pytest.raises(ValueError, match="video_mask"):
        model(video, audio, video_mask=torch.ones(N, T + 1, dtype=torch.bool))


# --- backbone weights -------------------------------------------------------------------------


def test_backbone_loads_a_saved_resnet18_state_dict(tmp_path):
    torch.manual_seed(1)
    saved = torchvision.models.resnet18().state_dict()  # with fc.*: a plain torchvision checkpoint
    path = tmp_path / "resnet18.pt"
    torch.save(saved, path)
    model = build_model(small_config(backbone_weights=str(path)))
    loaded = model.video.backbone.state_dict()
    assert set(loaded) == {k for k in saved if not k.startswith("fc.")}
    for key, value in loaded.items():
        torch.testing.assert_close(value, saved[key], atol=0, rtol=0)


def test_backbone_path_problems_are_one_line_errors(tmp_path):
    with pytest.raises(AvdaliError, match="not found") as missing:
        build_backbone(str(tmp_path / "nope.pt"))
    assert "nope.pt" in str(missing.value)

    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    with pytest.raises(AvdaliError, match="junk.pt: not a readable torch state_dict"):
        build_backbone(str(junk))

    state = torchvision.models.resnet18().state_dict()
    del state["layer1.0.conv1.weight"]
    state["extra.weight"] = torch.zeros(1)
    partial = tmp_path / "partial.pt"
    torch.save(state, partial)
    with pytest.raises(AvdaliError, match=r"1 missing keys \(e.g. layer1.0.conv1.weight\), 1 unexpected"):
        build_backbone(str(partial))

    state = torchvision.models.resnet18().state_dict()
    state["conv1.weight"] = torch.zeros(64, 1, 7, 7)
    wrong_shape = tmp_path / "wrong_shape.pt"
    torch.save(state, wrong_shape)
    with pytest.raises(AvdaliError, match="wrong_shape.pt: tensor shapes do not match resnet18") as shapes:
        build_backbone(str(wrong_shape))
    assert "\n" not in str(shapes.value)


def test_imagenet_offline_gives_a_clear_error(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(AvdaliError, match="could not fetch ImageNet weights") as error:
        build_model(small_config(backbone_weights="imagenet"))
    assert "backbone_weights='<path>'" in str(error.value) and "'none'" in str(error.value)


def test_imagenet_weights_are_loaded_when_available(monkeypatch):
    torch.manual_seed(2)
    published = torchvision.models.resnet18().state_dict()
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda url, **kwargs: published)
    backbone = build_backbone("imagenet")
    torch.testing.assert_close(backbone.conv1.weight, published["conv1.weight"], atol=0, rtol=0)


# --- config -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("fusion", "concat", "model.fusion must be one of 'cross', 'additive'"),
        ("num_classes", 1, "model.num_classes must be an integer ≥ 2"),
        ("num_classes", True, "model.num_classes"),
        ("dropout", 1.0, r"model.dropout must be a number in \[0, 1\)"),
        ("dropout", -0.1, "model.dropout"),
        ("audio_heads", 3, r"model.audio_heads must divide model.audio_dim \(128\)"),
        ("fusion_heads", 7, r"model.fusion_heads must divide model.video_dim \(512\)"),
        ("video_dim", 511, "model.video_dim must be even"),
        ("audio_kernel_size", 4, "model.audio_kernel_size must be odd"),
        ("audio_conv_channels", (), "model.audio_conv_channels"),
        ("audio_conv_channels", (64, 0), "model.audio_conv_channels must be an integer ≥ 1"),
        ("audio_features", "64", "model.audio_features"),
        ("backbone_weights", "", "model.backbone_weights"),
        ("freeze_backbone", "yes", "model.freeze_backbone"),
    ],
)
def test_config_errors_name_the_field(field, value, expected):
    with pytest.raises(ConfigError, match=expected):
        ModelConfig(**{field: value})


def test_config_accepts_toml_lists():
    cfg = ModelConfig(audio_conv_channels=[32, 64, 64], audio_pool=2)
    assert cfg.audio_conv_channels == (32, 64, 64)
    assert cfg.audio_downsampling == 8


# --- torch.compile ------------------------------------------------------------------------------


@pytest.mark.slow
def test_compiles_with_graph_breaks_only_at_the_lstms():
    """Dynamo traces everything but nn.LSTM (which it does not support and runs eagerly); aot_eager checks
    tracing and AOT autograd without the minutes of C++ code generation inductor needs on 2 cores."""
    import torch._dynamo

    model = eval_model(fusion="cross")
    video, audio = inputs()
    audio_len = torch.tensor([A, 61])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 1, 1]], dtype=torch.bool)
    # one sample without video, one without audio: the missing-stream stand-ins trace too, and every parameter learns
    present = dict(audio_present=torch.tensor([True, False]), video_present=torch.tensor([False, True]))
    with torch.no_grad():
        eager = model(video, audio, audio_len, mask, **present)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(video, audio, audio_len, mask, **present)
    assert explained.break_reasons and all("LSTM" in b.reason for b in explained.break_reasons)
    compiled = torch.compile(model, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(video, audio, audio_len, mask, **present), eager, atol=ATOL, rtol=0)
    model.train()
    compiled(video, audio, audio_len, mask, **present).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    torch._dynamo.reset()
