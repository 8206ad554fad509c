"""The slot autoencoder: encoder → Slot Attention → decoder, plus the projection head."""

from __future__ import annotations

import torch
from torch import nn


class SlotAutoencoder(nn.Module):
    """Returns named outputs; losses are computed elsewhere (slotsweep.losses).

    Outputs: `recon` (image [B, 3, R, R] or tokens [B, N, F]), `recons` (per slot),
    `masks` [B, K, h, w] (softmax over slots; h×w is the token grid for feature
    decoders), `slots` [B, K, D], `attn` [B, K, N] and `projection` [B*K, P] (None
    without a head).
    """

    def __init__(
        self,
        *,
        encoder: nn.Module,
        slot_attention: nn.Module,
        decoder: nn.Module,
        head: nn.Module | None = None,
        mask_grid: int | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.slot_attention = slot_attention
        self.decoder = decoder
        self.head = head
        self.mask_grid = mask_grid

    def forward(self, inputs: torch.Tensor) -> dict[str, torch.Tensor | None]:
        tokens = self.encoder(inputs)  # (B, N, C)
        slots, attn = self.slot_attention(tokens)  # (B, K, D), (B, K, N)
        out: dict[str, torch.Tensor | None] = dict(self.decoder(slots))
        if self.mask_grid is not None:  # token masks (B, K, N) → (B, K, g, g)
            masks = out["masks"]
            assert masks is not None  # every decoder returns its masks
            out["masks"] = masks.unflatten(-1, (self.mask_grid, self.mask_grid))
        out["slots"] = slots
        out["attn"] = attn
        out["projection"] = self.head(slots) if self.head is not None else None
        return out
