"""The audio encoder (Conv1d blocks → BiLSTM → Transformer → masked mean) and the padding-aware
sequence pieces it shares with the video encoder.

Padding never leaks: padded frames are zeroed before every convolution and pooling, the valid length
is carried through each pooling, the BiLSTM's backward direction starts at each sequence's own last
valid frame, and the Transformer and the mean ignore padded tokens. Everything is tensor ops on the
input's device, with no per-sample Python loops and no device→host syncs, so it compiles and runs
under autocast.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from avdali.models.config import ModelConfig


def lengths_to_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    """N,size bool mask, True for the first ``lengths[i]`` positions of row i."""
    return torch.arange(size, device=lengths.device) < lengths[:, None]


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of N,L,D ``x`` over L where ``mask`` (N,L bool) is True; rows with no True give zeros."""
    # where() rather than multiply: 0 * inf/nan in a padded position would still poison the sum.
    total = torch.where(mask[..., None], x, 0).sum(1)
    count = mask.sum(1, keepdim=True).clamp(min=1).to(total.dtype)
    return total / count


def reverse_within_lengths(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse the first ``lengths[i]`` steps of each row of N,L,D ``x``, leaving the padding in place.

    Its own inverse. This is what lets a plain forward LSTM act as the backward direction of a BiLSTM
    over padded batches without pack_padded_sequence (which needs the lengths on the host: a sync).
    """
    steps = torch.arange(x.shape[1], device=x.device)
    last = lengths[:, None] - 1
    index = torch.where(steps < lengths[:, None], last - steps, steps)
    return gather_steps(x, index[..., None])


def gather_steps(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x.gather(1, index.expand_as(x))`` for N,L,D ``x``, computed in float32 and returned in ``x``'s dtype.

    Why float32: gather's backward is ``scatter_add``, an autocast "promote" op. torch.compile traces the backward
    inside the forward's autocast region, where CUDA autocast prioritises against its default float16; with bf16
    tensors that fails ("Unexpected floating ScalarType in at::autocast::prioritize", pytorch/pytorch#132715).
    A float32 operand makes the promotion float32. The casts are exact (bf16/fp16 → fp32 → back)."""
    return x.float().gather(1, index.expand_as(x)).to(x.dtype)


def sinusoidal_positions(length: int, dim: int, *, device=None, dtype=None) -> torch.Tensor:
    """The Transformer paper's sinusoidal position code, length,dim (made per call: any length works)."""
    position = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    code = torch.zeros(length, dim, device=device, dtype=torch.float32)
    code[:, 0::2] = torch.sin(position * frequency)
    code[:, 1::2] = torch.cos(position * frequency[: dim // 2])
    return code.to(dtype) if dtype is not None else code


class MaskedBiLSTM(nn.Module):
    """A one-layer bidirectional LSTM over prefix-padded batches: N,L,input_size → N,L,2·hidden_size.

    Equal to ``nn.LSTM(bidirectional=True)`` run on ``pack_padded_sequence(x, lengths)``: the forward
    direction never sees the padding that follows a sequence, and the backward direction runs on each
    sequence reversed within its own length. Outputs at padded positions are meaningless; mask them.
    """

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.forward_lstm = nn.LSTM(input_size, hidden_size, batch_first=True)
        self.backward_lstm = nn.LSTM(input_size, hidden_size, batch_first=True)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        forward_out, _ = self.forward_lstm(x)
        backward_out, _ = self.backward_lstm(reverse_within_lengths(x, lengths))
        return torch.cat([forward_out, reverse_within_lengths(backward_out, lengths)], dim=-1)


class ConvBlock(nn.Module):
    """Conv1d → BatchNorm → ReLU → MaxPool → Dropout over N,C,A, with padded frames held at zero."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, pool: int, dropout: float):
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.norm = nn.BatchNorm1d(out_channels)
        self.pool = nn.MaxPool1d(pool) if pool > 1 else nn.Identity()
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        frame_mask = mask[:, None, :]
        # Zero padding before the conv so the last valid frames' receptive fields see the same zeros as the
        # conv's own padding of an unpadded clip, not garbage; again after BN+ReLU so a window that straddles
        # the end (only a clip shorter than one window) takes the max of its valid values and 0, which after
        # ReLU is the max of the valid values alone.
        x = torch.where(frame_mask, x, 0)
        x = torch.relu(self.norm(self.conv(x)))
        x = torch.where(frame_mask, x, 0)
        return self.dropout(self.pool(x))


class AudioEncoder(nn.Module):
    """N,F,A audio features + N valid lengths → N,audio_dim summary.

    Conv1d blocks (channels = F feature bins, time = A frames) shorten time by ``cfg.audio_pool`` per
    block; a BiLSTM then a Transformer encoder with sinusoidal positions model the token sequence; the
    summary is the mean over valid tokens.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.pool = cfg.audio_pool
        channels = (cfg.audio_features, *cfg.audio_conv_channels)
        self.blocks = nn.ModuleList(
            ConvBlock(c_in, c_out, cfg.audio_kernel_size, cfg.audio_pool, cfg.dropout)
            for c_in, c_out in zip(channels[:-1], channels[1:])
        )
        self.lstm = MaskedBiLSTM(channels[-1], cfg.audio_dim // 2)
        layer = nn.TransformerEncoderLayer(
            cfg.audio_dim, cfg.audio_heads, cfg.audio_ff_dim, cfg.dropout, batch_first=True, norm_first=True
        )
        # Nested tensors change output shapes with the data; off keeps shapes static for torch.compile.
        self.transformer = nn.TransformerEncoder(
            layer, cfg.audio_layers, norm=nn.LayerNorm(cfg.audio_dim), enable_nested_tensor=False
        )

    def forward(self, audio: torch.Tensor, audio_len: torch.Tensor | None = None) -> torch.Tensor:
        n, _, frames = audio.shape
        if audio_len is None:
            lengths = torch.full((n,), frames, device=audio.device, dtype=torch.long)
        else:
            # At least one frame, so no sample has an all-masked sequence (attention over nothing is NaN).
            lengths = audio_len.to(device=audio.device, dtype=torch.long).clamp(1, frames)
        x = audio
        for block in self.blocks:
            x = block(x, lengths_to_mask(lengths, x.shape[-1]))
            # A pooled token is valid when its whole window is: floor(len / pool), exactly what MaxPool1d
            # gives the same clip unpadded, so padding a clip never changes its output. At least 1 token.
            lengths = torch.div(lengths, self.pool, rounding_mode="floor").clamp(min=1)
        mask = lengths_to_mask(lengths, x.shape[-1])
        tokens = self.lstm(x.transpose(1, 2), lengths)
        tokens = tokens + sinusoidal_positions(tokens.shape[1], tokens.shape[2], device=tokens.device, dtype=tokens.dtype)
        tokens = self.transformer(tokens, src_key_padding_mask=~mask)
        return masked_mean(tokens, mask)
