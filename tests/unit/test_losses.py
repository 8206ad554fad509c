"""Each loss against a direct, loop-based computation on small random inputs."""

import itertools
import math

import pytest
import torch

from slotsweep.config import LossConfig
from slotsweep.losses import (
    beta_at,
    bottleneck_terms,
    compute_losses,
    cosine_loss,
    covariance_loss,
    reconstruction_loss,
    slot_covariance_loss,
    variance_loss,
)
from slotsweep.models import ProjectionHead


def loop_cov(rows: list[list[float]]) -> list[list[float]]:
    """Unbiased covariance of columns, with plain Python loops."""
    n, p = len(rows), len(rows[0])
    means = [sum(r[j] for r in rows) / n for j in range(p)]
    return [[sum((r[i] - means[i]) * (r[j] - means[j]) for r in rows) / (n - 1)
             for j in range(p)] for i in range(p)]


def loop_offdiag(cov):
    return sum(cov[i][j] ** 2 for i in range(len(cov)) for j in range(len(cov)) if i != j)


def loop_cos(a, b):
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


@pytest.fixture
def z():
    return torch.randn(12, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.mark.parametrize("normalize, div", [("p", 6), ("p2", 36)])
def test_covariance_over_features(z, normalize, div):
    expected = loop_offdiag(loop_cov(z.tolist())) / div
    assert covariance_loss(z, normalize=normalize).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("normalize", ["p", "p2"])
def test_covariance_over_slots(normalize):
    z = torch.randn(3, 4, 7, generator=torch.Generator().manual_seed(1))
    per_image = []
    for img in z.tolist():  # slots are variables, features are observations
        cov = loop_cov([list(col) for col in zip(*img, strict=True)])
        per_image.append(loop_offdiag(cov) / (4 if normalize == "p" else 16))
    expected = sum(per_image) / 3
    got = slot_covariance_loss(z, normalize=normalize).item()
    assert got == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0])
def test_variance(z, gamma):
    cov = loop_cov(z.tolist())
    expected = sum(max(0.0, gamma - math.sqrt(cov[j][j] + 1e-4)) for j in range(6)) / 6
    assert variance_loss(z, gamma=gamma, eps=1e-4).item() == pytest.approx(expected, rel=1e-6)


def test_variance_is_zero_when_every_feature_spreads_enough():
    z = torch.randn(1000, 4, generator=torch.Generator().manual_seed(2)) * 3
    assert variance_loss(z, gamma=1.0).item() == 0.0


@pytest.mark.parametrize("margin", [0.2, 0.0])
def test_cosine_paper_sum_and_authors_mean(margin):
    slots = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(3))
    s = slots.tolist()
    pairs = lambda b, diag: [(i, j) for i, j in itertools.product(range(4), repeat=2)  # noqa: E731
                             if diag or i != j]
    pen = lambda b, i, j: max(0.0, loop_cos(s[b][i], s[b][j]) - margin)  # noqa: E731
    paper = sum(sum(pen(b, i, j) for i, j in pairs(b, False)) for b in range(3)) / 3
    authors = sum(pen(b, i, j) for b in range(3) for i, j in pairs(b, True)) / (3 * 16)
    got_sum = cosine_loss(slots, margin=margin, reduction="sum").item()
    got_mean = cosine_loss(slots, margin=margin, reduction="mean").item()
    assert got_sum == pytest.approx(paper, rel=1e-5)
    assert got_mean == pytest.approx(authors, rel=1e-5)


def test_reconstruction_is_mean_squared_error():
    a, b = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    expected = sum((x - y) ** 2 for x, y in zip(a.flatten().tolist(), b.flatten().tolist(),
                                                 strict=True)) / a.numel()
    assert reconstruction_loss(a, b).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("depth", [0, 2])
def test_covloss_through_identity_and_deep_heads(depth):
    torch.manual_seed(0)
    slots = torch.randn(4, 3, 8)
    head = ProjectionHead(slot_size=8, proj_dim=8 if depth == 0 else 16, depth=depth,
                          norm="layernorm")
    z = head(slots)
    if depth == 0:
        torch.testing.assert_close(z, slots.reshape(12, 8))  # identity head
    else:
        assert len([m for m in head.net if isinstance(m, torch.nn.Linear)]) == depth + 1
    loss = LossConfig(type="covloss", beta=1.0, proj_depth=depth, proj_dim=z.shape[1])
    terms = bottleneck_terms(slots, z, loss)
    expected = loop_offdiag(loop_cov(z.tolist())) / z.shape[1]
    assert set(terms) == {"covariance"}
    assert terms["covariance"].item() == pytest.approx(expected, rel=1e-4)


def test_terms_by_loss_type_and_beta_weighting():
    torch.manual_seed(0)
    slots, z = torch.randn(2, 3, 4), torch.randn(6, 4)
    outputs = {"recon": torch.zeros(2, 5), "slots": slots, "projection": z}
    target = torch.ones(2, 5)
    none = compute_losses(outputs, target, LossConfig(), step=0)
    assert set(none) == {"recon", "loss"} and none["loss"].item() == pytest.approx(1.0)
    vic = compute_losses(outputs, target, LossConfig(type="vicreg", beta=0.5, proj_dim=4), step=0)
    assert set(vic) == {"recon", "covariance", "variance", "loss"}
    expected = 1.0 + 0.5 * (vic["covariance"] + vic["variance"]).item()
    assert vic["loss"].item() == pytest.approx(expected)
    cos = compute_losses(outputs, target, LossConfig(type="cosine", beta=2.0), step=0)
    assert set(cos) == {"recon", "cosine", "loss"}
    with pytest.raises(ValueError, match="projection head"):
        bottleneck_terms(slots, None, LossConfig(type="covloss", beta=1.0))


def test_beta_warms_up_linearly():
    assert beta_at(0, beta=2.0, warmup_steps=100) == 0.0
    assert beta_at(25, beta=2.0, warmup_steps=100) == pytest.approx(0.5)
    assert beta_at(100, beta=2.0, warmup_steps=100) == 2.0
    assert beta_at(10_000, beta=2.0, warmup_steps=100) == 2.0
    assert beta_at(0, beta=2.0, warmup_steps=0) == 2.0
    outputs = {"recon": torch.zeros(1, 2), "slots": torch.randn(1, 3, 4), "projection": None}
    loss = LossConfig(type="cosine", beta=1.0, warmup_steps=10)
    at0 = compute_losses(outputs, torch.ones(1, 2), loss, step=0)
    assert at0["loss"].item() == pytest.approx(at0["recon"].item())


def test_bottleneck_terms_stay_float32_under_bf16_autocast():
    z = torch.randn(32, 16).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert covariance_loss(z).dtype == torch.float32
        assert variance_loss(z).dtype == torch.float32
