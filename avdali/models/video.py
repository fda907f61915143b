"""The video encoder: a torchvision ResNet18 on every frame (fc removed → 512-d) then a BiLSTM over
time → the N,T,video_dim sequence the fusion attends to, plus where its start weights come from."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models import ResNet18_Weights

from avdali.errors import AvdaliError
from avdali.models.audio import MaskedBiLSTM, gather_steps, lengths_to_mask
from avdali.models.config import ModelConfig

BACKBONE_FEATURES = 512
"""ResNet18's pooled feature size (the input size of its fc layer)."""


def build_backbone(weights: str) -> nn.Module:
    """ResNet18 with fc replaced by Identity (frames N,3,H,W → N,512), in channels_last memory format.

    ``weights``: "none" (random init), "imagenet" (torchvision's IMAGENET1K_V1, fetched or taken from the
    torch hub cache) or a path to a resnet18 state_dict file (fc.* entries are ignored).
    """
    backbone = torchvision.models.resnet18(weights=None)
    backbone.fc = nn.Identity()
    if weights == "imagenet":
        _load_backbone_state(backbone, _imagenet_state_dict(), source="ImageNet weights")
    elif weights != "none":
        _load_backbone_state(backbone, _state_dict_file(Path(weights)), source=weights)
    # cuDNN/oneDNN convolutions are fastest in NHWC; the frames are made NHWC in forward to match.
    return backbone.to(memory_format=torch.channels_last)


def _imagenet_state_dict() -> dict:
    url = ResNet18_Weights.IMAGENET1K_V1.url
    try:
        return torch.hub.load_state_dict_from_url(
            url, map_location="cpu", progress=False, check_hash=True, weights_only=True
        )
    except Exception as error:  # any network, hash or cache problem means the same to the user
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise AvdaliError(
            f"could not fetch ImageNet weights for ResNet18 from {url} ({reason}); "
            f"use backbone_weights='<path>' with a local resnet18 state_dict or 'none' "
            f"(or put {url.rsplit('/', 1)[-1]} in {Path(torch.hub.get_dir()) / 'checkpoints'})"
        ) from error


def _state_dict_file(path: Path) -> dict:
    if not path.is_file():
        raise AvdaliError(f"{path}: backbone_weights file not found (expected a resnet18 state_dict, 'imagenet' or 'none')")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise AvdaliError(f"{path}: not a readable torch state_dict ({reason})") from error
    # Training checkpoints often nest the weights one level down.
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise AvdaliError(f"{path}: not a state_dict (expected a dict of parameter name → tensor)")
    return state


def _load_backbone_state(backbone: nn.Module, state: dict, *, source: str) -> None:
    # Strip a DataParallel/DDP prefix and drop the classifier head, which the encoder does not have.
    state = {k.removeprefix("module."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    try:
        result = backbone.load_state_dict(state, strict=False)
    except RuntimeError as error:  # raised for shape mismatches even when strict=False
        lines = [line.strip() for line in str(error).splitlines() if "size mismatch" in line]
        detail = lines[0] if lines else str(error).splitlines()[0]
        raise AvdaliError(f"{source}: tensor shapes do not match resnet18 ({detail})") from error
    if result.missing_keys or result.unexpected_keys:
        raise AvdaliError(
            f"{source}: not a resnet18 state_dict: {len(result.missing_keys)} missing keys "
            f"(e.g. {', '.join(result.missing_keys[:3]) or '-'}), {len(result.unexpected_keys)} unexpected keys "
            f"(e.g. {', '.join(result.unexpected_keys[:3]) or '-'})"
        )


def compact_order(mask: torch.Tensor) -> torch.Tensor:
    """Per row of an N,T bool mask, the permutation that moves the True positions to the front in order."""
    # A stable sort on "is padding" keeps real frames in time order.
    return torch.argsort((~mask).to(torch.int32), dim=1, stable=True)


class VideoEncoder(nn.Module):
    """Frames N,T,3,H,W (float, normalised) + N,T mask → (N,T,video_dim sequence, N,T mask).

    Frames are folded into the batch for the ResNet18, so the backbone sees N·T images in one call.
    Masked frames (False) may sit anywhere and hold anything: their features are zeroed, the real
    frames are moved to the front (in order) for the BiLSTM and moved back after, so neither LSTM
    direction crosses a masked frame. A sample with no real frame keeps its first frame, so attention
    always has a key.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.backbone = build_backbone(cfg.backbone_weights)
        self.freeze_backbone = cfg.freeze_backbone
        if self.freeze_backbone:
            self.backbone.requires_grad_(False)
            self.backbone.eval()
        self.lstm = MaskedBiLSTM(BACKBONE_FEATURES, cfg.video_dim // 2)

    def train(self, mode: bool = True) -> VideoEncoder:
        super().train(mode)
        if self.freeze_backbone:
            # A frozen backbone keeps its BatchNorm statistics too, not only its weights.
            self.backbone.eval()
        return self

    def forward(self, video: torch.Tensor, video_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        n, t = video.shape[:2]
        frames = video.flatten(0, 1).contiguous(memory_format=torch.channels_last)
        features = self.backbone(frames).reshape(n, t, -1)
        if video_mask is None:
            mask = torch.ones(n, t, dtype=torch.bool, device=video.device)
            lengths = torch.full((n,), t, dtype=torch.long, device=video.device)
            return torch.where(mask[..., None], self.lstm(features, lengths), 0), mask
        mask = video_mask.to(device=video.device, dtype=torch.bool)
        first = torch.arange(t, device=video.device) == 0
        mask = mask | (first & ~mask.any(1, keepdim=True))
        lengths = mask.sum(1)
        order = compact_order(mask)[..., None]
        compact = gather_steps(features, order)
        compact = torch.where(lengths_to_mask(lengths, t)[..., None], compact, 0)
        compact_sequence = self.lstm(compact, lengths)
        sequence = torch.empty_like(compact_sequence).scatter(1, order.expand_as(compact_sequence), compact_sequence)
        return torch.where(mask[..., None], sequence, 0), mask
