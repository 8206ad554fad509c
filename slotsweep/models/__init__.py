"""Models: Slot Attention, encoders, decoders, projection head, and the one factory."""

from __future__ import annotations

from slotsweep.config import LossConfig, ModelConfig
from slotsweep.models.decoders import (
    BroadcastCNNDecoder,
    BroadcastMLPUpsampleDecoder,
    MLPPatchDecoder,
)
from slotsweep.models.encoders import CNNEncoder, FeatureEncoder
from slotsweep.models.model import SlotAutoencoder
from slotsweep.models.projection import ProjectionHead
from slotsweep.models.slot_attention import SlotAttention

__all__ = ["SlotAttention", "SlotAutoencoder", "ProjectionHead", "build_model"]


def build_model(model: ModelConfig, loss: LossConfig) -> SlotAutoencoder:
    """The one place that maps config to module keyword arguments."""
    encoder: CNNEncoder | FeatureEncoder
    if model.encoder == "cnn":
        encoder = CNNEncoder(
            resolution=model.resolution, channels=model.encoder_channels,
            kernel=model.encoder_kernel, norm_eps=model.norm_eps,
        )
    else:
        encoder = FeatureEncoder(feature_dim=model.feature_dim, out_size=model.slot_size)

    slot_attention = SlotAttention(
        num_slots=model.num_slots, num_iterations=model.num_iterations,
        input_size=encoder.out_size, slot_size=model.slot_size,
        mlp_hidden_size=model.mlp_hidden_size, epsilon=model.epsilon, norm_eps=model.norm_eps,
        eval_slot_init=model.eval_slot_init, eval_seed=model.eval_seed,
        slot_init=model.slot_init, implicit_grad=model.implicit_grad,
    )

    mask_grid = None
    decoder: BroadcastCNNDecoder | BroadcastMLPUpsampleDecoder | MLPPatchDecoder
    if model.decoder in ("broadcast_cnn", "broadcast_tconv"):
        decoder = BroadcastCNNDecoder(
            slot_size=model.slot_size, resolution=model.resolution,
            channels=model.decoder_width, kernel=model.decoder_kernel,
            layers=model.decoder_layers, transposed=model.decoder == "broadcast_tconv",
        )
    elif model.decoder == "broadcast_mlp_upsample":
        decoder = BroadcastMLPUpsampleDecoder(
            slot_size=model.slot_size, resolution=model.resolution,
            broadcast_size=model.broadcast_size, channels=model.decoder_width,
            kernel=model.decoder_kernel,
        )
    else:
        decoder = MLPPatchDecoder(
            slot_size=model.slot_size, num_patches=model.num_patches,
            feature_dim=model.feature_dim, hidden=tuple(model.decoder_hidden),
        )
        mask_grid = round(model.num_patches**0.5)

    head = None
    if loss.uses_head:
        head = ProjectionHead(
            slot_size=model.slot_size, proj_dim=loss.proj_dim or model.slot_size,
            depth=loss.proj_depth,
            norm=loss.proj_norm,
        )
    return SlotAutoencoder(
        encoder=encoder, slot_attention=slot_attention, decoder=decoder, head=head,
        mask_grid=mask_grid,
    )
