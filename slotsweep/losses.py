"""Losses: reconstruction, and the bottleneck terms of the paper (Sec. 3).

All are pure functions of tensors. Bottleneck statistics are computed in float32 even
under bf16 autocast: squared covariances of 1024 features underflow in bf16.

Notation: slots S [B, K, D]; projection Z = h(S) [B*K, P].
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from slotsweep.config import LossConfig


def _float32(fn):
    """Run `fn` outside autocast, on float32 copies of its tensor arguments."""

    @functools.wraps(fn)
    def wrapper(x: torch.Tensor, *args, **kwargs):
        with torch.autocast(x.device.type, enabled=False):
            args = tuple(a.float() if isinstance(a, torch.Tensor) else a for a in args)
            return fn(x.float(), *args, **kwargs)

    return wrapper


@_float32
def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error to the image or to the ViT tokens."""
    return F.mse_loss(recon, target)


@_float32
def variance_loss(z: torch.Tensor, *, gamma: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """v(Z) = mean_j relu(gamma - sqrt(Var(z_j) + eps)), unbiased variance per feature."""
    std = torch.sqrt(z.var(dim=0, unbiased=True) + eps)  # (P,)
    return F.relu(gamma - std).mean()


def _offdiag_sq_sum(cov: torch.Tensor) -> torch.Tensor:
    """Sum of squared off-diagonal entries over the last two dims."""
    return cov.pow(2).sum(dim=(-2, -1)) - cov.diagonal(dim1=-2, dim2=-1).pow(2).sum(-1)


@_float32
def covariance_loss(z: torch.Tensor, *, normalize: str = "p") -> torch.Tensor:
    """c(Z) = sum_{i≠j} Cov(Z)_ij² / P (paper) or / P² (the authors' runs).

    Covariance over the P features of all N = B*K projected slots, centred per
    dimension, unbiased (÷ (N - 1)).
    """
    num, dim = z.shape
    zc = z - z.mean(dim=0)  # (N, P)
    cov = zc.T @ zc / (num - 1)  # (P, P)
    return _offdiag_sq_sum(cov) / (dim if normalize == "p" else dim * dim)


@_float32
def slot_covariance_loss(z: torch.Tensor, *, normalize: str = "p") -> torch.Tensor:
    """The "covariance over slots" variant: per image a K×K covariance of the slots
    across their P features (slots are the variables, features the observations);
    off-diagonal squares ÷ K (or K²), averaged over images. `z` is [B, K, P]."""
    num_slots, dim = z.shape[1], z.shape[2]
    zc = z - z.mean(dim=2, keepdim=True)  # (B, K, P)
    cov = zc @ zc.transpose(1, 2) / (dim - 1)  # (B, K, K)
    norm = num_slots if normalize == "p" else num_slots * num_slots
    return (_offdiag_sq_sum(cov) / norm).mean()


@_float32
def cosine_loss(
    slots: torch.Tensor, *, margin: float = 0.2, reduction: str = "sum"
) -> torch.Tensor:
    """Pairwise cosine penalty on the slots of each image: relu(cos(s_i, s_j) - margin).

    "sum": the paper's sum over i ≠ j, averaged over images. "mean": the authors'
    `cosine_embedding_loss(target=-1)` averaged over all B·K² pairs *including* the
    diagonal (each diagonal pair adds the constant 1 - margin and no gradient).
    """
    s = F.normalize(slots, dim=-1)  # (B, K, D)
    cos = s @ s.transpose(1, 2)  # (B, K, K)
    penalty = F.relu(cos - margin)
    if reduction == "mean":
        return penalty.mean()
    eye = torch.eye(cos.shape[1], dtype=torch.bool, device=cos.device)
    return penalty.masked_fill(eye, 0.0).sum(dim=(1, 2)).mean()


def bottleneck_terms(
    slots: torch.Tensor, projection: torch.Tensor | None, loss: LossConfig
) -> dict[str, torch.Tensor]:
    """The regulariser's named terms for `loss.type` (empty for "none")."""
    if loss.type == "cosine":
        return {
            "cosine": cosine_loss(
                slots, margin=loss.cosine_margin, reduction=loss.cosine_reduction
            )
        }
    if loss.type not in ("covloss", "vicreg"):
        return {}
    if projection is None:
        raise ValueError(f"loss type {loss.type!r} needs the model's projection head")
    if loss.cov_over == "slots":
        z = projection.unflatten(0, (slots.shape[0], slots.shape[1]))  # (B, K, P)
        terms = {"covariance": slot_covariance_loss(z, normalize=loss.cov_normalize)}
    else:
        terms = {"covariance": covariance_loss(projection, normalize=loss.cov_normalize)}
    if loss.type == "vicreg":
        terms["variance"] = variance_loss(projection, gamma=loss.gamma, eps=loss.eps)
    return terms


def beta_at(step: int, *, beta: float, warmup_steps: int) -> float:
    """The loss weight, warmed up linearly from 0 over `warmup_steps`."""
    if warmup_steps <= 0:
        return beta
    return beta * min(1.0, step / warmup_steps)


def compute_losses(
    outputs: dict[str, torch.Tensor | None],
    target: torch.Tensor,
    loss: LossConfig,
    *,
    step: int,
) -> dict[str, torch.Tensor]:
    """All named terms plus `loss` = recon + beta(step) * sum(bottleneck terms)."""
    terms = {"recon": reconstruction_loss(outputs["recon"], target)}
    slots = outputs["slots"]
    assert slots is not None  # SlotAutoencoder always returns its slots
    terms.update(bottleneck_terms(slots, outputs["projection"], loss))
    weight = beta_at(step, beta=loss.beta, warmup_steps=loss.warmup_steps)
    total = terms["recon"]
    for name, value in terms.items():
        if name != "recon":
            total = total + weight * value
    terms["loss"] = total
    return terms
