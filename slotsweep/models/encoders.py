"""Encoders: a CNN on pixels (Slot Attention) and an adapter for precomputed ViT tokens."""

from __future__ import annotations

import torch
from torch import nn


def position_grid(height: int, width: int) -> torch.Tensor:
    """The 4-channel ramp [y, x, 1-y, 1-x] of Locatello et al.; shape [H, W, 4]."""
    ys = torch.linspace(0.0, 1.0, height)
    xs = torch.linspace(0.0, 1.0, width)
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([y, x, 1.0 - y, 1.0 - x], dim=-1)


class SoftPositionEmbed(nn.Module):
    """Adds a learned linear projection of the position grid to channels-last features."""

    def __init__(self, channels: int, height: int, width: int) -> None:
        super().__init__()
        self.proj = nn.Linear(4, channels)
        self.register_buffer("grid", position_grid(height, width), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.proj(self.grid.to(x.dtype))  # x: (B, H, W, C)


class CNNEncoder(nn.Module):
    """4 x conv 5x5 + ReLU, soft position embedding, LayerNorm + MLP (paper Sec. 3)."""

    def __init__(
        self, *, resolution: int, channels: int = 64, kernel: int = 5, norm_eps: float = 1e-3
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for _ in range(4):
            layers += [nn.Conv2d(in_ch, channels, kernel, padding=kernel // 2), nn.ReLU(True)]
            in_ch = channels
        self.convs = nn.Sequential(*layers)
        self.pos = SoftPositionEmbed(channels, resolution, resolution)
        self.norm = nn.LayerNorm(channels, eps=norm_eps)
        self.mlp = nn.Sequential(
            nn.Linear(channels, channels), nn.ReLU(True), nn.Linear(channels, channels)
        )
        self.out_size = channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """`images` [B, 3, H, W] in [-1, 1] → tokens [B, H*W, C]."""
        x = self.convs(images).permute(0, 2, 3, 1)  # (B, H, W, C)
        x = self.pos(x).flatten(1, 2)  # (B, H*W, C)
        return self.mlp(self.norm(x))


class FeatureEncoder(nn.Module):
    """DINOSAUR's input adapter: LayerNorm + MLP from frozen ViT tokens to the slot size."""

    def __init__(self, *, feature_dim: int, out_size: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(feature_dim),
            nn.Linear(feature_dim, feature_dim),
            nn.ReLU(True),
            nn.Linear(feature_dim, out_size),
        )
        self.out_size = out_size

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """`features` [B, N, feature_dim] (any float dtype) → [B, N, out_size]."""
        linear = self.net[1]
        assert isinstance(linear, nn.Linear)  # built in __init__
        return self.net(features.to(linear.weight.dtype))
