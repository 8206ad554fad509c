"""Every model variant: forward shapes and one optimizer step at batch 2; attention."""

import pytest
import torch

from slotsweep.config import build_config
from slotsweep.losses import compute_losses
from slotsweep.models import SlotAttention, build_model

SMALL = {"feature_dim": 24, "num_patches": 16, "decoder_hidden": [32, 32], "slot_size": 16,
         "mlp_hidden_size": 32, "encoder_channels": 16, "decoder_channels": 8, "num_slots": 4}

VARIANTS = {
    # name: (model overrides, loss overrides)
    "slot_attention_cnn": ({"encoder": "cnn", "decoder": "broadcast_cnn", "resolution": 16}, {}),
    "vit_image_recon": (
        {"encoder": "features", "decoder": "broadcast_mlp_upsample", "resolution": 32,
         "broadcast_size": 8}, {}),
    "dinosaur": ({"encoder": "features", "decoder": "mlp_patch"}, {}),
    "covloss_deep_layernorm": (
        {"encoder": "cnn", "decoder": "broadcast_cnn", "resolution": 16},
        {"type": "covloss", "beta": 1.0, "proj_depth": 2, "proj_dim": 64,
         "cov_normalize": "p2"}),
    "covloss_batchnorm_over_slots": (
        {"encoder": "features", "decoder": "mlp_patch"},
        {"type": "covloss", "beta": 1.0, "proj_depth": 1, "proj_dim": 32,
         "proj_norm": "batchnorm", "cov_over": "slots"}),
    "vicreg_identity_head": (
        {"encoder": "features", "decoder": "mlp_patch"},
        {"type": "vicreg", "beta": 1.0, "proj_depth": 0, "proj_dim": 16}),
    "vicreg_no_norm": (
        {"encoder": "features", "decoder": "broadcast_mlp_upsample", "resolution": 16},
        {"type": "vicreg", "beta": 0.5, "proj_depth": 3, "proj_dim": 32, "proj_norm": "none"}),
    "queries_implicit_grad": (
        {"encoder": "cnn", "decoder": "broadcast_cnn", "resolution": 16,
         "slot_init": "queries", "implicit_grad": True, "eval_slot_init": "mean"}, {}),
    "authors_tconv_fresh": (
        {"encoder": "cnn", "decoder": "broadcast_tconv", "resolution": 16,
         "decoder_channels": None, "decoder_layers": 3, "slot_init": "authors",
         "eval_slot_init": "fresh"}, {}),
    "cosine": (
        {"encoder": "cnn", "decoder": "broadcast_cnn", "resolution": 16},
        {"type": "cosine", "beta": 0.01, "cosine_reduction": "mean"}),
}


def make(name):
    model_over, loss_over = VARIANTS[name]
    cfg = build_config({"model": {**SMALL, **model_over}, "loss": loss_over})
    return cfg, build_model(cfg.model, cfg.loss)


def batch_for(cfg, batch=2):
    m = cfg.model
    images = torch.rand(batch, 3, m.resolution, m.resolution) * 2 - 1
    features = torch.randn(batch, m.num_patches, m.feature_dim)
    inputs = images if m.encoder == "cnn" else features
    target = features if m.target == "features" else images
    return inputs, target


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant_forward_shapes_and_one_step(name):
    torch.manual_seed(0)
    cfg, model = make(name)
    inputs, target = batch_for(cfg)
    out = model(inputs)
    m, B, K = cfg.model, 2, cfg.model.num_slots
    grid = m.resolution if m.target == "image" else int(m.num_patches**0.5)
    assert out["slots"].shape == (B, K, m.slot_size)
    assert out["masks"].shape == (B, K, grid, grid)
    assert out["recon"].shape == target.shape
    assert out["recons"].shape[:2] == (B, K)
    assert torch.allclose(out["masks"].sum(1), torch.ones(B, grid, grid), atol=1e-5)
    if cfg.loss.uses_head:
        assert out["projection"].shape == (B * K, cfg.loss.proj_dim)
    else:
        assert out["projection"] is None

    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    terms = compute_losses(out, target, cfg.loss, step=0)
    terms["loss"].backward()
    opt.step()
    assert torch.isfinite(terms["loss"])
    changed = sum(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    assert changed == len(before), "every parameter should receive a gradient and move"


def test_recon_is_mask_weighted_sum_of_slot_recons():
    cfg, model = make("slot_attention_cnn")
    out = model(batch_for(cfg)[0])
    mixed = (out["recons"] * out["masks"].unsqueeze(2)).sum(1)
    torch.testing.assert_close(out["recon"], mixed)


def _slot_attention(**kw):
    torch.manual_seed(0)
    return SlotAttention(num_slots=5, num_iterations=3, input_size=12, slot_size=8,
                         mlp_hidden_size=16, **kw)


def test_attention_is_softmax_over_slots_then_renormalised_over_inputs():
    sa = _slot_attention()
    slots = torch.randn(3, 5, 8)
    k = sa.project_k(sa.norm_inputs(torch.randn(3, 20, 12)))
    attn = sa.attention(slots, k)
    # Direct computation, written out independently.
    q = sa.project_q(sa.norm_slots(slots))
    expected = torch.empty(3, 5, 20)
    for b in range(3):
        for n in range(20):
            logits = torch.stack([q[b, i] @ k[b, n] / 8**0.5 for i in range(5)])
            expected[b, :, n] = torch.softmax(logits, 0) + sa.epsilon
        expected[b] /= expected[b].sum(dim=1, keepdim=True)
    torch.testing.assert_close(attn, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(attn.sum(2), torch.ones(3, 5))  # a weighted mean per slot
    # Before the renormalisation, each input's weights over slots sum to 1 (competition).
    raw = torch.softmax(torch.einsum("bkd,bnd->bkn", q, k) / 8**0.5, dim=1)
    torch.testing.assert_close(raw.sum(1), torch.ones(3, 20))


def test_slot_attention_is_permutation_equivariant():
    sa = _slot_attention().eval()
    inputs, slots = torch.randn(2, 20, 12), torch.randn(2, 5, 8)
    perm = torch.tensor([3, 0, 4, 1, 2])
    out, attn = sa(inputs, slots)
    out_p, attn_p = sa(inputs, slots[:, perm])
    torch.testing.assert_close(out_p, out[:, perm], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(attn_p, attn[:, perm], rtol=1e-4, atol=1e-5)


def test_eval_slot_init_is_deterministic_and_training_is_not():
    sa = _slot_attention(eval_seed=3)
    inputs = torch.randn(4, 20, 12)
    sa.eval()
    a, _ = sa(inputs)
    b, _ = sa(inputs)
    assert torch.equal(a, b)
    # The same image gets the same slots whatever batch it is evaluated in.
    c, _ = sa(inputs[2:3])
    torch.testing.assert_close(c[0], a[2], rtol=1e-5, atol=1e-6)
    sa.train()
    assert not torch.equal(sa(inputs)[0], sa(inputs)[0])
    other = _slot_attention(eval_seed=4).eval()
    assert not torch.equal(other(inputs)[0], a)


def test_eval_fresh_init_draws_per_image_and_restarts_at_every_evaluation():
    """The authors draw new slot noise for every image; `fresh` does too, seeded: each
    pass in eval mode over the same images in the same order gets the same draws."""
    sa = _slot_attention(eval_slot_init="fresh", eval_seed=3)
    cpu = torch.device("cpu")

    def one_pass(batch_sizes):
        sa.eval()
        return torch.cat([sa.initial_slots(n, cpu, torch.float32) for n in batch_sizes])

    first = one_pass([4, 4])
    assert not torch.allclose(first[0], first[1])  # per image, unlike `seeded`
    assert torch.equal(one_pass([4, 4]), first)  # the sequence restarts
    assert torch.equal(one_pass([3, 5]), first)  # and does not depend on the batch size
    assert not torch.equal(one_pass([1]), first[4:5])  # it depends on the position
    sa.train()
    assert not torch.equal(sa.initial_slots(8, cpu, torch.float32), first)
    other = _slot_attention(eval_slot_init="fresh", eval_seed=4).eval()
    assert not torch.equal(other.initial_slots(8, cpu, torch.float32), first)


def test_eval_mean_init_starts_every_slot_at_mu():
    sa = _slot_attention(eval_slot_init="mean").eval()
    init = sa.initial_slots(2, torch.device("cpu"), torch.float32)
    torch.testing.assert_close(init, sa.slots_mu.expand(2, 5, 8))


def test_covloss_gradient_reaches_slot_attention():
    cfg, model = make("covloss_deep_layernorm")
    out = model(batch_for(cfg)[0])
    terms = compute_losses(out, batch_for(cfg)[1], cfg.loss, step=0)
    terms["covariance"].backward()
    sa_grads = [p.grad for p in model.slot_attention.parameters()]
    assert all(g is not None for g in sa_grads)
    assert sum(g.abs().sum() for g in sa_grads) > 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.decoder.parameters())
