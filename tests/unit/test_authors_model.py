"""The paper's multi-dSprites recipe builds the authors' model (issue 28).

The facts below are the authors' model as their PyTorch code builds it, written down
from its published description (PAPER.md, "The authors' multi-dSprites model"): layer
list, shapes, strides, paddings and init rules. The built model is checked against
them, and the transposed-convolution decoder against the same function computed as
flipped-kernel convolutions, in float64.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

from slotsweep.config import load_config
from slotsweep.models import build_model

RECIPES = ["configs/dsprites_slot_attention.yaml", "configs/dsprites_covloss.yaml",
           "configs/dsprites_cosine.yaml"]
D, K, R = 64, 5, 64  # slot size (= every width), slots, resolution

# (our parameter name, shape) in the authors' order: encoder, Slot Attention, decoder.
AUTHORS_PARAMETERS = [
    # Encoder: 4 x conv 5x5 (padding 2) at 64 channels, soft position embedding
    # (a linear map of the 4-channel grid), LayerNorm, MLP 64 -> 64 -> 64.
    ("encoder.convs.0.weight", (D, 3, 5, 5)), ("encoder.convs.0.bias", (D,)),
    *[(f"encoder.convs.{i}.{p}", s) for i in (2, 4, 6)
      for p, s in (("weight", (D, D, 5, 5)), ("bias", (D,)))],
    ("encoder.pos.proj.weight", (D, 4)), ("encoder.pos.proj.bias", (D,)),
    ("encoder.norm.weight", (D,)), ("encoder.norm.bias", (D,)),
    ("encoder.mlp.0.weight", (D, D)), ("encoder.mlp.0.bias", (D,)),
    ("encoder.mlp.2.weight", (D, D)), ("encoder.mlp.2.bias", (D,)),
    # Slot Attention: one Gaussian [1, 1, 64] for all slots, three LayerNorms, q/k/v
    # without bias, GRU, MLP hidden 128.
    ("slot_attention.slots_mu", (1, 1, D)), ("slot_attention.slots_log_sigma", (1, 1, D)),
    *[(f"slot_attention.{n}.{p}", (D,)) for n in ("norm_inputs", "norm_slots", "norm_mlp")
      for p in ("weight", "bias")],
    *[(f"slot_attention.project_{n}.weight", (D, D)) for n in "qkv"],
    ("slot_attention.gru.weight_ih", (3 * D, D)), ("slot_attention.gru.weight_hh", (3 * D, D)),
    ("slot_attention.gru.bias_ih", (3 * D,)), ("slot_attention.gru.bias_hh", (3 * D,)),
    ("slot_attention.mlp.0.weight", (128, D)), ("slot_attention.mlp.0.bias", (128,)),
    ("slot_attention.mlp.2.weight", (D, 128)), ("slot_attention.mlp.2.bias", (D,)),
    # Decoder: broadcast to 64x64, soft position embedding, 3 x ConvTranspose2d 5x5
    # (stride 1, padding 2) at 64 channels with ReLU, ConvTranspose2d 3x3 (padding 1) to
    # RGB + alpha. A transposed convolution's weight is [in, out, k, k].
    ("decoder.pos.proj.weight", (D, 4)), ("decoder.pos.proj.bias", (D,)),
    *[(f"decoder.net.{i}.{p}", s) for i in (0, 2, 4)
      for p, s in (("weight", (D, D, 5, 5)), ("bias", (D,)))],
    ("decoder.net.6.weight", (D, 4, 3, 3)), ("decoder.net.6.bias", (4,)),
]
# (kernel, stride, padding, in, out) of the decoder's transposed convolutions.
AUTHORS_DECODER = [(5, 1, 2, D, D)] * 3 + [(3, 1, 1, D, 4)]


def recipe_model(path="configs/dsprites_slot_attention.yaml", seed=0):
    config = load_config(path)
    torch.manual_seed(seed)
    return config, build_model(config.model, config.loss)


def transposed_convs(decoder) -> list[nn.ConvTranspose2d]:
    return [m for m in decoder.net if isinstance(m, nn.ConvTranspose2d)]


@pytest.mark.parametrize("path", RECIPES)
def test_paper_recipes_have_the_authors_parameters(path):
    config, model = recipe_model(path)
    assert config.model.slot_init == "authors" and config.model.decoder == "broadcast_tconv"
    ours = [(n, tuple(p.shape)) for n, p in model.named_parameters()
            if not n.startswith("head.")]  # covloss's projection head is the paper's own
    assert ours == AUTHORS_PARAMETERS
    count = sum(math.prod(shape) for _, shape in AUTHORS_PARAMETERS)
    assert count == sum(p.numel() for n, p in model.named_parameters()
                        if not n.startswith("head."))
    assert round(count, -3) == 685_000  # "about 685k parameters" (issue 28)


def test_decoder_layers_strides_paddings_and_receptive_field():
    _, model = recipe_model()
    convs = transposed_convs(model.decoder)
    assert [(c.kernel_size[0], c.stride[0], c.padding[0], c.in_channels, c.out_channels)
            for c in convs] == AUTHORS_DECODER
    assert all(c.output_padding == (0, 0) and c.dilation == (1, 1) and c.groups == 1
               for c in convs)
    assert [type(m) for m in model.decoder.net[1::2]] == [nn.ReLU] * 3  # ReLU after each
    # Receptive field: 1 + 3 x (5 - 1) + (3 - 1) = 15 pixels of the broadcast grid.
    x = torch.zeros(1, D, R, R, requires_grad=True)
    model.decoder.net(x)[0, :, R // 2, R // 2].sum().backward()
    rows, cols = x.grad.abs().sum((0, 1)).nonzero(as_tuple=True)
    assert (int(rows.max() - rows.min()) + 1, int(cols.max() - cols.min()) + 1) == (15, 15)


def test_decoder_equals_flipped_kernel_convolutions_in_float64():
    _, model = recipe_model()
    decoder = model.decoder.double()
    slots = torch.randn(2, K, D, dtype=torch.float64)
    out = decoder(slots)
    # The same function another way: a stride-1 transposed convolution is a convolution
    # with the kernel flipped, in and out channels swapped, and padding k - 1 - p.
    x = decoder.broadcast(slots, R).permute(0, 3, 1, 2)
    for i, conv in enumerate(transposed_convs(decoder)):
        k, p = conv.kernel_size[0], conv.padding[0]
        x = F.conv2d(x, conv.weight.transpose(0, 1).flip(2, 3), conv.bias, padding=k - 1 - p)
        x = F.relu(x) if i < 3 else x
    x = x.unflatten(0, (2, K))  # (B, K, 4, H, W)
    masks = x[:, :, 3].softmax(dim=1)
    recon = (x[:, :, :3] * masks.unsqueeze(2)).sum(dim=1)
    torch.testing.assert_close(out["masks"], masks, rtol=0, atol=1e-12)
    torch.testing.assert_close(out["recon"], recon, rtol=0, atol=1e-12)


def _pooled(draws: int, pick) -> torch.Tensor:
    return torch.cat([pick(recipe_model(seed=s)[1]).detach().flatten() for s in range(draws)])


def test_slot_init_is_the_authors_over_many_draws():
    """slots_mu ~ N(0, 1) and slots_log_sigma ~ U[0, 1) (sigma between 1 and e),
    not xavier-uniform (|mu| ~ 0.12): Kolmogorov-Smirnov over 40 models' draws."""
    mu = _pooled(40, lambda m: m.slot_attention.slots_mu).double().numpy()
    log_sigma = _pooled(40, lambda m: m.slot_attention.slots_log_sigma).double().numpy()
    assert stats.kstest(mu, "norm").pvalue > 1e-3
    assert stats.kstest(log_sigma, "uniform").pvalue > 1e-3
    assert log_sigma.min() >= 0 and log_sigma.max() < 1
    assert 0.75 < abs(mu).mean() < 0.85  # E|N(0, 1)| = 0.798


@pytest.mark.parametrize("layer", [0, 6])
def test_decoder_init_is_pytorchs_transposed_default_over_many_draws(layer):
    """Weights and biases ~ U(-b, b) with b = 1 / sqrt(fan-in), the fan-in counting the
    *output* channels of a transposed convolution (weight.size(1) * k * k): for the 64->4
    output layer b = 1/6, 4x a Conv2d's of the same shape (1/24)."""
    (k, _, _, _, out_ch) = AUTHORS_DECODER[layer // 2]
    bound = 1 / math.sqrt(out_ch * k * k)
    for part in ("weight", "bias"):
        values = _pooled(20, lambda m, p=part: getattr(m.decoder.net[layer], p))
        values = values.double().numpy()
        assert stats.kstest(values, stats.uniform(-bound, 2 * bound).cdf).pvalue > 1e-3
    if layer == 6:
        assert bound / (1 / math.sqrt(D * k * k)) == pytest.approx(4.0)
