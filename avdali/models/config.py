"""ModelConfig: every size and choice of AVFusionModel, checked when it is made.

Defaults are small enough to train on 2 CPU cores at 8 frames of 64² and big enough for real data
(RAVDESS/MELD at 16 frames of 112², 64 log-mel bins over 3 s). Messages name the field as it appears
in a config file's ``[model]`` section.
"""

from __future__ import annotations

from dataclasses import dataclass

from avdali.config_checks import choice, divides, even, integer_at_least
from avdali.errors import ConfigError

FUSIONS = ("cross", "additive")
"""Fusion kinds: multi-head cross-attention (audio queries video) or the notebook's additive attention."""


@dataclass
class ModelConfig:
    num_classes: int = 7
    """Output classes: 7 for the unified space, 8 for RAVDESS' native space (``ravdess8``)."""
    audio_features: int = 64
    """F, the feature bins of the audio input N,F,A (train sets it from ``DataConfig.feature_bins``)."""
    audio_dim: int = 128
    """Size of the audio summary and of the audio BiLSTM/Transformer (each LSTM direction gets half)."""
    audio_conv_channels: tuple[int, ...] = (64, 128)
    """Output channels of the Conv1d blocks (Conv → BatchNorm → ReLU → MaxPool → Dropout), one per block."""
    audio_kernel_size: int = 3
    """Odd Conv1d kernel size over audio frames (odd so 'same' padding keeps frames aligned)."""
    audio_pool: int = 2
    """MaxPool1d size and stride after each conv block (1 = no pooling); shortens the sequence by this factor per block."""
    audio_heads: int = 4
    """Attention heads of the audio Transformer encoder; must divide ``audio_dim``."""
    audio_layers: int = 2
    """Layers of the audio Transformer encoder."""
    audio_ff_dim: int = 256
    """Feed-forward width inside each audio Transformer layer."""
    video_dim: int = 512
    """Size of the per-frame video sequence (BiLSTM over ResNet18 features; each direction gets half)."""
    backbone_weights: str = "none"
    """ResNet18 start weights: "none" (random), "imagenet" (torchvision download) or a path to a resnet18 state_dict file."""
    freeze_backbone: bool = False
    """Keep the ResNet18 fixed (no gradients, BatchNorm statistics frozen): much cheaper steps with pretrained weights."""
    fusion: str = "cross"
    """How audio attends to video: "cross" (multi-head cross-attention) or "additive" (the notebook's additive attention)."""
    fusion_heads: int = 8
    """Heads of the cross-attention fusion; must divide ``video_dim``."""
    fusion_ff_dim: int = 512
    """Width of the feed-forward block after the cross-attention."""
    additive_dim: int = 128
    """k, the hidden size of the additive attention scores (fusion="additive")."""
    dropout: float = 0.3
    """Dropout probability in the audio blocks, the Transformer, the fusion and before the classifier, in [0, 1)."""

    def __post_init__(self):
        # TOML gives lists; a tuple keeps the config hashable and printable the same way.
        if isinstance(self.audio_conv_channels, list):
            self.audio_conv_channels = tuple(self.audio_conv_channels)
        integer_at_least("model.num_classes", self.num_classes, 2)
        integer_at_least("model.audio_features", self.audio_features, 1)
        integer_at_least("model.audio_dim", self.audio_dim, 2)
        even("model.audio_dim", self.audio_dim, "each LSTM direction gets half")
        if not isinstance(self.audio_conv_channels, tuple) or not self.audio_conv_channels:
            raise ConfigError(
                f"model.audio_conv_channels must be a non-empty list of channel counts, got {self.audio_conv_channels!r}"
            )
        for channels in self.audio_conv_channels:
            integer_at_least("model.audio_conv_channels", channels, 1)
        integer_at_least("model.audio_kernel_size", self.audio_kernel_size, 1)
        if self.audio_kernel_size % 2 == 0:
            raise ConfigError(f"model.audio_kernel_size must be odd (1, 3, 5, ...), got {self.audio_kernel_size}")
        integer_at_least("model.audio_pool", self.audio_pool, 1)
        integer_at_least("model.audio_heads", self.audio_heads, 1)
        divides("model.audio_heads", self.audio_heads, "model.audio_dim", self.audio_dim)
        integer_at_least("model.audio_layers", self.audio_layers, 1)
        integer_at_least("model.audio_ff_dim", self.audio_ff_dim, 1)
        integer_at_least("model.video_dim", self.video_dim, 2)
        even("model.video_dim", self.video_dim, "each LSTM direction gets half")
        if not isinstance(self.backbone_weights, str) or not self.backbone_weights.strip():
            raise ConfigError(
                f'model.backbone_weights must be "none", "imagenet" or a path to a resnet18 state_dict, '
                f"got {self.backbone_weights!r}"
            )
        if not isinstance(self.freeze_backbone, bool):
            raise ConfigError(f"model.freeze_backbone must be true or false, got {self.freeze_backbone!r}")
        choice("model.fusion", self.fusion, FUSIONS)
        integer_at_least("model.fusion_heads", self.fusion_heads, 1)
        divides("model.fusion_heads", self.fusion_heads, "model.video_dim", self.video_dim)
        integer_at_least("model.fusion_ff_dim", self.fusion_ff_dim, 1)
        integer_at_least("model.additive_dim", self.additive_dim, 1)
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ConfigError(f"model.dropout must be a number in [0, 1), got {self.dropout!r}")
        self.dropout = float(self.dropout)

    @property
    def audio_downsampling(self) -> int:
        """How many input audio frames one audio token covers after all pooling."""
        return self.audio_pool ** len(self.audio_conv_channels)

