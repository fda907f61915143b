"""AVFusionModel: audio encoder + video encoder + fusion + classifier, from one ModelConfig.

    audio N,F,A ─► Conv1d blocks ─► BiLSTM ─► Transformer ─► masked mean ─► a (N,audio_dim) ─┐
    video N,T,3,H,W ─► ResNet18 per frame ─► BiLSTM ─► v (N,T,video_dim) ─► fusion(a, v) ─► f ─┤
                                                   concat[a; f] ─► LayerNorm ─► Dropout ─► Linear ─► logits

A stream can be absent (a clip without sound or without a usable picture; modality dropout in training): where
``audio_present`` is False, ``a`` is replaced by the learned ``missing_audio`` embedding (before fusion, so the fusion
query knows it too); where ``video_present`` is False, ``f`` is replaced by ``missing_video``. Never zeros: a zero
vector would look like a real, quiet stream; a learned embedding tells the classifier the stream is not there.
"""

from __future__ import annotations

import torch
from torch import nn

from avdali.models.audio import AudioEncoder
from avdali.models.config import ModelConfig
from avdali.models.fusion import build_fusion
from avdali.models.video import VideoEncoder


MISSING_KEYS = ("missing_audio", "missing_video")
"""State-dict keys of the "missing stream" embeddings; checkpoints written before they existed lack them."""


class AVFusionModel(nn.Module):
    """Audio-visual emotion classifier.
    ``forward(video, audio, audio_len=None, video_mask=None, audio_present=None, video_present=None) → logits N,C``.

    video: float N,T,3,H,W, ImageNet-normalised (uint8 batches go through ``avdali.data.normalize.prepare_video``
    first); audio: N,F,A features with F = ``cfg.audio_features``; audio_len: N valid audio frames (the rest is
    padding; None = all valid); video_mask: N,T bool, True = real frame (None = all real); audio_present /
    video_present: N bool, False = that stream is absent and its tensor a placeholder that is not read (None = all
    present).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.audio = AudioEncoder(cfg)
        self.video = VideoEncoder(cfg)
        self.fusion = build_fusion(cfg)
        joint = cfg.audio_dim + cfg.video_dim
        self.classifier = nn.Sequential(nn.LayerNorm(joint), nn.Dropout(cfg.dropout), nn.Linear(joint, cfg.num_classes))
        # Created last, so every other part draws the same initial weights from a seed as before they existed.
        # Small: near the origin the classifier's LayerNorm sees them as "no strong evidence" until trained.
        self.missing_audio = nn.Parameter(0.02 * torch.randn(cfg.audio_dim))
        self.missing_video = nn.Parameter(0.02 * torch.randn(cfg.video_dim))

    def forward(
        self,
        video: torch.Tensor,
        audio: torch.Tensor,
        audio_len: torch.Tensor | None = None,
        video_mask: torch.Tensor | None = None,
        audio_present: torch.Tensor | None = None,
        video_present: torch.Tensor | None = None,
    ) -> torch.Tensor:
        self._check_inputs(video, audio, audio_len, video_mask, audio_present, video_present)
        audio_summary = self.audio(audio, audio_len)
        if audio_present is not None:  # per sample on the device (no host sync, one graph for torch.compile)
            audio_summary = torch.where(audio_present[:, None], audio_summary, self.missing_audio.to(audio_summary.dtype))
        video_sequence, mask = self.video(video, video_mask)
        fused = self.fusion(audio_summary, video_sequence, mask).to(audio_summary.dtype)
        if video_present is not None:
            fused = torch.where(video_present[:, None], fused, self.missing_video.to(fused.dtype))
        return self.classifier(torch.cat([audio_summary, fused], dim=-1))

    def _check_inputs(self, video, audio, audio_len, video_mask, audio_present=None, video_present=None) -> None:
        # Shape and dtype checks only: they are static under torch.compile and cost no device sync.
        if video.ndim != 5 or video.shape[2] != 3:
            raise ValueError(f"video must be N,T,3,H,W, got shape {tuple(video.shape)}")
        if not video.is_floating_point():
            raise ValueError(
                f"video must be float and normalised (got {video.dtype}); pass uint8 batches through prepare_video"
            )
        if audio.ndim != 3 or audio.shape[1] != self.cfg.audio_features:
            raise ValueError(
                f"audio must be N,F,A with F = model.audio_features = {self.cfg.audio_features}, got shape {tuple(audio.shape)}"
            )
        if audio.shape[0] != video.shape[0]:
            raise ValueError(f"video and audio batch sizes differ: {video.shape[0]} vs {audio.shape[0]}")
        if audio.shape[2] < self.cfg.audio_downsampling:
            raise ValueError(
                f"audio has {audio.shape[2]} frames, fewer than the {self.cfg.audio_downsampling} one audio token needs"
            )
        if audio_len is not None and tuple(audio_len.shape) != (audio.shape[0],):
            raise ValueError(f"audio_len must have shape ({audio.shape[0]},), got {tuple(audio_len.shape)}")
        if video_mask is not None and tuple(video_mask.shape) != tuple(video.shape[:2]):
            raise ValueError(f"video_mask must have shape {tuple(video.shape[:2])}, got {tuple(video_mask.shape)}")
        for name, present in (("audio_present", audio_present), ("video_present", video_present)):
            if present is not None and (tuple(present.shape) != (video.shape[0],) or present.dtype != torch.bool):
                raise ValueError(f"{name} must be bool of shape ({video.shape[0]},), got {present.dtype} {tuple(present.shape)}")

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per part (audio, video_backbone, video_lstm, fusion, classifier, the missing-stream embeddings)
        and in total."""
        parts = {
            "audio": self.audio,
            "video_backbone": self.video.backbone,
            "video_lstm": self.video.lstm,
            "fusion": self.fusion,
            "classifier": self.classifier,
        }
        counts = {name: sum(p.numel() for p in part.parameters()) for name, part in parts.items()}
        counts["missing"] = self.missing_audio.numel() + self.missing_video.numel()
        counts["total"] = sum(p.numel() for p in self.parameters())
        return counts


def with_missing_embeddings(weights: dict, model: AVFusionModel) -> tuple[dict, tuple[str, ...]]:
    """A checkpoint's state dict made loadable into ``model``: ``MISSING_KEYS`` it lacks (written before they
    existed) taken from ``model``'s own untrained values; and those keys. Such a checkpoint can serve both streams
    only (``avdali.train.modality``): its embeddings were never trained."""
    added = tuple(k for k in MISSING_KEYS if k not in weights)
    if not added:
        return weights, ()
    own = model.state_dict()
    return {**weights, **{k: own[k] for k in added}}, added


def build_model(cfg: ModelConfig) -> AVFusionModel:
    """The model described by ``cfg`` (loads the backbone weights it names; AvdaliError if they can't be had)."""
    return AVFusionModel(cfg)
