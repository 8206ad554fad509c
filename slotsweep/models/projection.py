"""The VICReg-style projection head h: slots → Z (paper Sec. 3, Fig. 1)."""

from __future__ import annotations

from torch import nn


def _norm(kind: str, size: int) -> nn.Module:
    if kind == "layernorm":
        return nn.LayerNorm(size)
    if kind == "batchnorm":  # per feature, as VICReg (not the authors' per-slot BatchNorm)
        return nn.BatchNorm1d(size)
    return nn.Identity()


class ProjectionHead(nn.Module):
    """`depth` hidden layers of Linear → norm → ReLU, then Linear; depth 0 = identity."""

    def __init__(self, *, slot_size: int, proj_dim: int, depth: int, norm: str) -> None:
        super().__init__()
        if depth == 0:
            if proj_dim != slot_size:
                raise ValueError(f"identity head needs proj_dim == slot_size ({slot_size})")
            self.net: nn.Module = nn.Identity()
            return
        layers: list[nn.Module] = []
        in_size = slot_size
        for _ in range(depth):
            layers += [nn.Linear(in_size, proj_dim), _norm(norm, proj_dim), nn.ReLU(True)]
            in_size = proj_dim
        layers.append(nn.Linear(proj_dim, proj_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, slots):
        """`slots` [B, K, D] → Z [B*K, P]: every slot of the batch is one sample."""
        return self.net(slots.flatten(0, 1))
