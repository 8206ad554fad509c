"""Typed, frozen, validated trial configuration.

A trial is fully described by a `TrialConfig`: model, loss, data, train and eval
sections. Configs load from YAML, take dotted-key overrides (`loss.beta=0.1`) and
serialise back to YAML losslessly. Every error names the file and the dotted key path,
in one line, at load time. No torch import here: the sweep layer validates sweep files
before any worker starts.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from slotsweep.config_io import (
    ConfigError,
    apply_overrides,
    flatten,
    format_validation_error,
    parse_override,
    read_yaml,
)

PositiveInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
IntTuple = Annotated[tuple[PositiveInt, ...], Field(strict=False)]


class _Section(BaseModel):
    # strict: YAML already types values, so "64" for an int is a mistake, not a coercion.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ModelConfig(_Section):
    """The slot model (Locatello et al. 2020; DINOSAUR, Seitzer et al. 2022)."""

    encoder: Literal["cnn", "features"] = "cnn"
    decoder: Literal[
        "broadcast_cnn", "broadcast_tconv", "broadcast_mlp_upsample", "mlp_patch"
    ] = "broadcast_cnn"
    resolution: PositiveInt = 64
    num_slots: PositiveInt = 5
    num_iterations: PositiveInt = 3
    slot_size: PositiveInt = 64
    mlp_hidden_size: PositiveInt = 128
    # gaussian: slots ~ N(mu, sigma) with learned mu, sigma, both xavier-uniform at the
    #   start (Locatello et al.; google-research's code): |mu| ~ 0.12, sigma 0.8-1.2.
    # authors: the same Gaussian started as the paper authors' code does: mu ~ N(0, 1),
    #   log sigma ~ U[0, 1) (sigma 1.0-2.7).
    # queries: one learned initial vector per slot (BO-QSA, Jia et al. 2023); off-paper.
    slot_init: Literal["gaussian", "authors", "queries"] = "gaussian"
    # Implicit differentiation (Chang et al. 2022): back-propagate through the last
    # iteration only, treating the earlier ones as a fixed-point solver; off-paper.
    implicit_grad: bool = False
    # Evaluation noise is seeded so FG-ARI is deterministic. seeded: one draw shared by
    # every image; fresh: a draw per image, the sequence restarting at every evaluation
    # (the authors draw per image, unseeded); mean: every slot starts at mu (for queries;
    # with a shared Gaussian all slots would stay identical).
    eval_slot_init: Literal["seeded", "fresh", "mean"] = "seeded"
    eval_seed: NonNegInt = 0
    epsilon: PositiveFloat = 1e-8
    norm_eps: PositiveFloat = 1e-3
    # CNN encoder on pixels: 4 x conv 5x5 (Locatello et al. multi-dSprites / CLEVR).
    encoder_channels: PositiveInt = 64
    encoder_kernel: PositiveInt = 5
    # Precomputed ViT tokens (DINOSAUR): T tokens of feature_dim.
    feature_dim: PositiveInt = 768
    num_patches: PositiveInt = 196
    # Decoders. broadcast_cnn: full-resolution spatial broadcast, decoder_layers k×k
    #   convolutions + a 3×3 output (4 × 5×5 at 32: Locatello et al. as first read here).
    # broadcast_tconv: the same with transposed convolutions and PyTorch's default init,
    #   as the paper authors' code builds it (3 layers of 5×5 at the slot size).
    # broadcast_mlp_upsample: the paper's COCO image decoder; mlp_patch: DINOSAUR's.
    # decoder_channels null = the slot size (the authors' width).
    decoder_channels: PositiveInt | None = 32
    decoder_kernel: PositiveInt = 5
    decoder_layers: PositiveInt = 4
    broadcast_size: PositiveInt = 8
    decoder_hidden: IntTuple = (2048, 2048, 2048)

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.decoder == "mlp_patch" and self.encoder != "features":
            raise ValueError(
                "decoder: 'mlp_patch' reconstructs ViT features; needs encoder: features"
            )
        if self.decoder == "broadcast_mlp_upsample":
            steps = self.resolution // self.broadcast_size
            if self.resolution % self.broadcast_size or steps & (steps - 1):
                raise ValueError(
                    f"resolution: {self.resolution} must be broadcast_size "
                    f"({self.broadcast_size}) times a power of two"
                )
        if self.slot_init != "queries" and self.eval_slot_init == "mean" and self.num_slots > 1:
            raise ValueError(
                f"eval_slot_init: 'mean' gives identical slots with slot_init "
                f"'{self.slot_init}'; use 'seeded' or 'fresh'"
            )
        if self.slot_init == "queries" and self.eval_slot_init == "fresh":
            raise ValueError(
                "eval_slot_init: 'fresh' draws noise, and slot_init 'queries' has none; "
                "use 'mean'"
            )
        grid = math.isqrt(self.num_patches)  # exact for any int (a float overflows)
        if self.encoder == "features" and grid * grid != self.num_patches:
            raise ValueError(f"num_patches: {self.num_patches} is not a square token grid")
        if self.encoder_kernel % 2 == 0 or self.decoder_kernel % 2 == 0:
            raise ValueError("encoder_kernel/decoder_kernel: must be odd")
        return self

    @property
    def decoder_width(self) -> int:
        """The decoder's channels: `decoder_channels`, or the slot size when null."""
        return self.decoder_channels or self.slot_size

    @property
    def target(self) -> str:
        """What the decoder reconstructs: 'features' for DINOSAUR, else 'image'."""
        return "features" if self.decoder == "mlp_patch" else "image"


class LossConfig(_Section):
    """Reconstruction + beta * bottleneck term (paper Sec. 3; DESIGN.md)."""

    type: Literal["none", "covloss", "vicreg", "cosine"] = "none"
    beta: NonNegFloat = 0.0
    warmup_steps: NonNegInt = 0
    # Projection head h: proj_depth hidden layers of proj_dim (Linear, norm, ReLU), then Linear.
    proj_depth: NonNegInt = 2
    # proj_dim null = the slot size (what an identity head, proj_depth 0, needs).
    proj_dim: PositiveInt | None = 1024
    proj_norm: Literal["layernorm", "batchnorm", "none"] = "layernorm"
    # variance term v(Z) (vicreg only): gamma target std, eps inside the sqrt.
    gamma: NonNegFloat = 1.0
    eps: PositiveFloat = 1e-4
    # covariance term c(Z): the paper divides by P, the authors' runs by P^2.
    cov_normalize: Literal["p", "p2"] = "p"
    cov_over: Literal["features", "slots"] = "features"
    # cosine term: paper's sum over pairs i != j, or the authors' mean over all B*K^2 pairs.
    cosine_margin: Annotated[float, Field(ge=-1, lt=1)] = 0.2
    cosine_reduction: Literal["sum", "mean"] = "sum"

    @property
    def uses_head(self) -> bool:
        return self.type in ("covloss", "vicreg")


class DataConfig(_Section):
    """Where the Arrow shards are; `synthetic` generates colored multi-dSprites first."""

    train: str = "data/dsprites/train"
    val: str = "data/dsprites/val"
    synthetic: bool = False
    synthetic_train: PositiveInt = 10_000
    synthetic_val: PositiveInt = 320
    synthetic_seed: NonNegInt = 0
    num_workers: NonNegInt = 0
    # The training split held in device memory and sampled there (no per-step host copy):
    # "auto" stages it on a CUDA device when it fits in stage_memory_fraction of the
    # free device memory (DINO ViT-B/16 COCO train: ~35 GB), "device" always (on the
    # trainer's device, the CPU included), "stream" never. Same batches either way.
    stage: Literal["auto", "device", "stream"] = "auto"
    stage_memory_fraction: Annotated[float, Field(gt=0, le=1)] = 0.5


class TrainConfig(_Section):
    """Optimisation (Adam, warmup then exponential decay; PAPER.md reference values)."""

    steps: PositiveInt = 500_000
    batch_size: PositiveInt = 64
    lr: PositiveFloat = 4e-4
    warmup_steps: NonNegInt = 10_000
    decay_rate: Annotated[float, Field(gt=0, le=1)] = 0.5
    decay_steps: PositiveInt = 100_000
    # Locatello et al. and the authors decay from step 0; DINOSAUR only after warmup.
    decay_after_warmup: bool = False
    grad_clip: NonNegFloat = 0.0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16"] = "fp32"
    compile: bool = False
    log_every: PositiveInt = 100
    checkpoint_every: PositiveInt = 1000


class EvalConfig(_Section):
    every: PositiveInt = 5000
    batch_size: PositiveInt = 64
    max_images: PositiveInt = 320
    num_pictures: NonNegInt = 8
    # The feature-prediction probe (paper Table 2) on the final model: slots of the first
    # `probe_train_images` training scenes train it, the validation scenes score it.
    probe: bool = False
    probe_train_images: PositiveInt = 2000


class TrialConfig(_Section):
    seed: NonNegInt = 0
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()

    @model_validator(mode="after")
    def _check(self) -> TrialConfig:
        loss, model = self.loss, self.model
        if loss.uses_head and loss.proj_depth == 0 and loss.proj_dim not in (
            None, model.slot_size
        ):
            raise ValueError(
                f"loss.proj_dim: {loss.proj_dim} must equal model.slot_size "
                f"({model.slot_size}) when loss.proj_depth is 0 (identity head); "
                "null means 'the slot size'"
            )
        if loss.uses_head and loss.proj_norm == "batchnorm" and self.train.batch_size < 2:
            raise ValueError("loss.proj_norm: batchnorm needs train.batch_size >= 2")
        if loss.type != "none" and loss.beta == 0:
            raise ValueError(f"loss.beta: is 0, so loss.type '{loss.type}' would do nothing")
        return self

    @property
    def proj_dim(self) -> int:
        """P, the width of the projection Z (the slot size when loss.proj_dim is null)."""
        return self.loss.proj_dim or self.model.slot_size

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def flat(self) -> dict[str, Any]:
        """Dotted keys → values (MLflow params, sweep spaces)."""
        return flatten(self.to_dict())


# ---------------------------------------------------------------- loading


def known_keys() -> set[str]:
    """Every dotted key a TrialConfig accepts (used to validate sweep search spaces)."""
    return set(TrialConfig().flat())


def build_config(
    data: dict[str, Any], *, source: str = "<config>", overrides: dict[str, Any] | None = None
) -> TrialConfig:
    """Validate a config tree (plus dotted overrides) into a TrialConfig."""
    tree = apply_overrides(data, overrides or {})
    try:
        return TrialConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source, TrialConfig)) from None


def load_config(
    path: str | Path, overrides: dict[str, Any] | list[str] | None = None
) -> TrialConfig:
    """Load a trial config YAML file, applying `key=value` strings or a dotted-key dict."""
    if isinstance(overrides, list):
        overrides = dict(parse_override(item) for item in overrides)
    return build_config(read_yaml(path), source=str(path), overrides=overrides)
