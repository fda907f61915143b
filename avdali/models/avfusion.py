"""AVFusionModel: audio encoder + video encoder + fusion + classifier, from one ModelConfig.

    audio N,F,A ─► Conv1d blocks ─► BiLSTM ─► Transformer ─► masked mean ─► a (N,audio_dim) ─┐
    video N,T,3,H,W ─► ResNet18 per frame ─► BiLSTM ─► v (N,T,video_dim) ─► fusion(a, v) ─► f ─┤
                                                   concat[a; f] ─► LayerNorm ─► Dropout ─► Linear ─► logits
"""

from __future__ import annotations

import torch
from torch import nn

from avdali.models.audio import AudioEncoder
from avdali.models.config import ModelConfig
from avdali.models.fusion import build_fusion
from avdali.models.video import VideoEncoder


class AVFusionModel(nn.Module):
    """Audio-visual emotion classifier. ``forward(video, audio, audio_len=None, video_mask=None) → logits N,num_classes``.

    video: float N,T,3,H,W, ImageNet-normalised (uint8 batches go through ``avdali.data.normalize.prepare_video``
    first); audio: N,F,A features with F = ``cfg.audio_features``; audio_len: N valid audio frames (the rest is
    padding; None = all valid); video_mask: N,T bool, True = real frame (None = all real).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.audio = AudioEncoder(cfg)
        self.video = VideoEncoder(cfg)
        self.fusion = build_fusion(cfg)
        joint = cfg.audio_dim + cfg.video_dim
        self.classifier = nn.Sequential(nn.LayerNorm(joint), nn.Dropout(cfg.dropout), nn.Linear(joint, cfg.num_classes))

    def forward(
        self,
        video: torch.Tensor,
        audio: torch.Tensor,
        audio_len: torch.Tensor | None = None,
        video_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        self._check_inputs(video, audio, audio_len, video_mask)
        audio_summary = self.audio(audio, audio_len)
        video_sequence, mask = self.video(video, video_mask)
        fused = self.fusion(audio_summary, video_sequence, mask)
        return self.classifier(torch.cat([audio_summary, fused.to(audio_summary.dtype)], dim=-1))

    def _check_inputs(self, video, audio, audio_len, video_mask) -> None:
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

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per part (audio, video_backbone, video_lstm, fusion, classifier) and in total."""
        parts = {
            "audio": self.audio,
            "video_backbone": self.video.backbone,
            "video_lstm": self.video.lstm,
            "fusion": self.fusion,
            "classifier": self.classifier,
        }
        counts = {name: sum(p.numel() for p in part.parameters()) for name, part in parts.items()}
        counts["total"] = sum(p.numel() for p in self.parameters())
        return counts


def build_model(cfg: ModelConfig) -> AVFusionModel:
    """The model described by ``cfg`` (loads the backbone weights it names; AvdaliError if they can't be had)."""
    return AVFusionModel(cfg)
