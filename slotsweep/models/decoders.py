"""Decoders. Each maps slots [B, K, D] to per-slot reconstructions and alpha masks
normalised over slots (softmax), and their mask-weighted sum."""

from __future__ import annotations

import torch
from torch import nn

from slotsweep.models.encoders import SoftPositionEmbed


def combine(recons: torch.Tensor, alpha: torch.Tensor) -> dict[str, torch.Tensor]:
    """Softmax the alpha logits over slots (dim 1) and mix the per-slot reconstructions."""
    masks = alpha.softmax(dim=1)  # (B, K, ...)
    recon = (recons * masks.unsqueeze(2)).sum(dim=1)
    return {"recon": recon, "recons": recons, "masks": masks}


class _BroadcastBase(nn.Module):
    """Spatial broadcast (Watters et al. 2019): tile each slot over a grid, add positions."""

    pos: SoftPositionEmbed  # set by each subclass

    def broadcast(self, slots: torch.Tensor, size: int) -> torch.Tensor:
        batch, num_slots, dim = slots.shape
        x = slots.reshape(batch * num_slots, 1, 1, dim).expand(-1, size, size, -1)
        return self.pos(x)  # (B*K, size, size, D)

    def split(self, out: torch.Tensor, batch: int) -> dict[str, torch.Tensor]:
        out = out.unflatten(0, (batch, -1))  # (B, K, 4, H, W)
        return combine(out[:, :, :3], out[:, :, 3])


class BroadcastCNNDecoder(_BroadcastBase):
    """Broadcast to full resolution, then `layers` stride-1 k×k convolutions with ReLU and
    a 3×3 one to RGB + alpha logit (Slot Attention on multi-dSprites).

    `transposed=True` builds the authors' multi-dSprites decoder (PAPER.md): the same
    layout with `ConvTranspose2d` layers (at stride 1 and padding k//2 the same function
    class as a convolution with the kernel flipped), kept for PyTorch's default init:
    a transposed convolution's fan-in counts its *output* channels, so its first weights
    are larger than a `Conv2d`'s of the same shape (4× for the 64→4 output layer).
    """

    def __init__(
        self, *, slot_size: int, resolution: int, channels: int = 32, kernel: int = 5,
        layers: int = 4, transposed: bool = False,
    ) -> None:
        super().__init__()
        self.resolution = resolution
        self.pos = SoftPositionEmbed(slot_size, resolution, resolution)
        conv = nn.ConvTranspose2d if transposed else nn.Conv2d
        convs: list[nn.Module] = []
        in_ch = slot_size
        for _ in range(layers):
            convs += [conv(in_ch, channels, kernel, padding=kernel // 2), nn.ReLU(True)]
            in_ch = channels
        convs.append(conv(channels, 4, 3, padding=1))  # RGB + alpha logit
        self.net = nn.Sequential(*convs)

    def forward(self, slots: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.broadcast(slots, self.resolution).permute(0, 3, 1, 2)  # (B*K, D, R, R)
        return self.split(self.net(x), slots.shape[0])


class BroadcastMLPUpsampleDecoder(_BroadcastBase):
    """The paper's image decoder for ViT slots on COCO (Sec. 4.3.1): broadcast to a
    small grid, a per-pixel MLP, then strided transposed convolutions up to resolution."""

    def __init__(
        self, *, slot_size: int, resolution: int, broadcast_size: int = 8, channels: int = 64,
        kernel: int = 5,
    ) -> None:
        super().__init__()
        self.broadcast_size = broadcast_size
        self.pos = SoftPositionEmbed(slot_size, broadcast_size, broadcast_size)
        self.mlp = nn.Sequential(
            nn.Linear(slot_size, channels), nn.ReLU(True),
            nn.Linear(channels, channels), nn.ReLU(True),
        )
        ups: list[nn.Module] = []
        size = broadcast_size
        while size < resolution:
            ups += [
                nn.ConvTranspose2d(
                    channels, channels, kernel, stride=2, padding=kernel // 2, output_padding=1
                ),
                nn.ReLU(True),
            ]
            size *= 2
        ups.append(nn.Conv2d(channels, 4, 3, padding=1))
        self.up = nn.Sequential(*ups)

    def forward(self, slots: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.mlp(self.broadcast(slots, self.broadcast_size))  # (B*K, s, s, C)
        return self.split(self.up(x.permute(0, 3, 1, 2)), slots.shape[0])


class MLPPatchDecoder(nn.Module):
    """DINOSAUR's decoder: each slot plus a learned position embedding per patch goes
    through one shared MLP to a token (feature_dim) and an alpha logit."""

    def __init__(
        self, *, slot_size: int, num_patches: int, feature_dim: int, hidden: tuple[int, ...]
    ) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.randn(1, 1, num_patches, slot_size) * 0.02)
        layers: list[nn.Module] = []
        in_size = slot_size
        for width in hidden:
            layers += [nn.Linear(in_size, width), nn.ReLU(True)]
            in_size = width
        layers.append(nn.Linear(in_size, feature_dim + 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, slots: torch.Tensor) -> dict[str, torch.Tensor]:
        x = slots.unsqueeze(2) + self.pos  # (B, K, N, D)
        out = self.mlp(x)  # (B, K, N, F + 1)
        recons, alpha = out[..., :-1], out[..., -1]  # (B, K, N, F), (B, K, N)
        masks = alpha.softmax(dim=1)
        recon = (recons * masks.unsqueeze(-1)).sum(dim=1)  # (B, N, F)
        return {"recon": recon, "recons": recons, "masks": masks}
