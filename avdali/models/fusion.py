"""Fusion: how the audio summary picks what matters in the video sequence → one fused video vector.

Both kinds take (audio summary N,audio_dim; video sequence N,T,video_dim; mask N,T, True = real frame)
and return N,video_dim; masked frames get no weight.
"""

from __future__ import annotations

import torch
from torch import nn

from avdali.models.audio import masked_mean
from avdali.models.config import ModelConfig


class CrossAttentionFusion(nn.Module):
    """The audio summary, projected to video_dim, is the single query of multi-head attention over the
    video frames; then residual + LayerNorm and a feed-forward block with residual + LayerNorm, as in a
    (post-norm) Transformer decoder layer."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.query = nn.Linear(cfg.audio_dim, cfg.video_dim)
        self.attention = nn.MultiheadAttention(cfg.video_dim, cfg.fusion_heads, dropout=cfg.dropout, batch_first=True)
        self.attention_norm = nn.LayerNorm(cfg.video_dim)
        self.feed_forward = nn.Sequential(
            nn.Linear(cfg.video_dim, cfg.fusion_ff_dim),
            nn.GELU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.fusion_ff_dim, cfg.video_dim),
        )
        self.feed_forward_norm = nn.LayerNorm(cfg.video_dim)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, audio_summary: torch.Tensor, video: torch.Tensor, video_mask: torch.Tensor) -> torch.Tensor:
        query = self.query(audio_summary)[:, None, :]
        attended, _ = self.attention(query, video, video, key_padding_mask=~video_mask, need_weights=False)
        x = self.attention_norm(query + self.dropout(attended))
        x = self.feed_forward_norm(x + self.dropout(self.feed_forward(x)))
        return x[:, 0]


class AdditiveAttentionFusion(nn.Module):
    """The original notebook's additive attention: ``alpha = softmax_t(mean_k tanh(Wv·v_t + Wa·a))``,
    then the masked mean over time of ``v_t · (1 + alpha_t)``.

    The 1 + alpha keeps every real frame in the mean and lets attention only boost frames; softmax runs
    over real frames only.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.video_proj = nn.Linear(cfg.video_dim, cfg.additive_dim)
        # No bias: it would only duplicate video_proj's bias inside the sum.
        self.audio_proj = nn.Linear(cfg.audio_dim, cfg.additive_dim, bias=False)

    def attention_weights(self, audio_summary: torch.Tensor, video: torch.Tensor, video_mask: torch.Tensor) -> torch.Tensor:
        """alpha, N,T: softmax over each sample's real frames (0 on masked frames)."""
        scores = torch.tanh(self.video_proj(video) + self.audio_proj(audio_summary)[:, None, :]).mean(-1)
        scores = scores.masked_fill(~video_mask, float("-inf"))
        return scores.float().softmax(dim=1).to(video.dtype)

    def forward(self, audio_summary: torch.Tensor, video: torch.Tensor, video_mask: torch.Tensor) -> torch.Tensor:
        alpha = self.attention_weights(audio_summary, video, video_mask)
        return masked_mean(video * (1 + alpha[..., None]), video_mask)


def build_fusion(cfg: ModelConfig) -> nn.Module:
    """The fusion module named by ``cfg.fusion``."""
    return CrossAttentionFusion(cfg) if cfg.fusion == "cross" else AdditiveAttentionFusion(cfg)
