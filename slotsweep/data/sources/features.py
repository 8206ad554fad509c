"""Frozen ViT token features (DINOSAUR's encoder), computed once per dataset.

A timm ViT (default DINO ViT-B/16, `vit_base_patch16_224.dino`) runs over images with
ImageNet normalisation; the tokens of block N (default: the last) are taken *without*
the final norm and with the prefix tokens (CLS, registers) dropped, and stored as
float16 — 196 × 768 per 224×224 image for ViT-B/16 (PAPER.md, "DINOSAUR").
Weights: timm's pretrained weights (needs the hub), a local checkpoint file, or
`random` for offline tests; the manifest records which, with a hash.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)
DEFAULT_ENCODER = "vit_base_patch16_224.dino"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Encoder:
    """A frozen ViT and what the manifest records about it."""

    model: torch.nn.Module
    name: str
    weights: str  # "pretrained", "random" or a file path
    weights_hash: str
    block: int  # 1-based index of the block whose tokens are taken
    mean: tuple[float, ...]  # per RGB channel, as timm's data config gives it
    std: tuple[float, ...]
    image_size: int
    grid: tuple[int, int]
    dim: int

    def attributes(self) -> dict:
        return {"encoder": self.name, "weights": self.weights,
                "weights_hash": self.weights_hash, "block": self.block,
                "normalisation": {"mean": list(self.mean), "std": list(self.std)},
                "encoder_image_size": self.image_size, "token_grid": list(self.grid),
                "feature_dim": self.dim, "prefix_tokens": "dropped", "final_norm": False}


def _state_hash(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def create_encoder(
    name: str = DEFAULT_ENCODER, *, weights: str = "pretrained", block: int | None = None,
    seed: int = 0, **model_kwargs,
) -> Encoder:
    """Build the frozen encoder. `weights`: "pretrained" (timm hub), "random" (seeded,
    for offline tests), or a path to a state dict (loaded with `weights_only=True`)."""
    import timm
    from timm.data import resolve_model_data_config

    # A timm ViT: its blocks, patch_embed and embed_dim are architecture attributes that
    # create_model's return type (nn.Module) does not declare.
    model: Any
    if weights == "random":
        torch.manual_seed(seed)
        model = timm.create_model(name, pretrained=False, num_classes=0, **model_kwargs)
    elif weights == "pretrained":
        try:
            model = timm.create_model(name, pretrained=True, num_classes=0, **model_kwargs)
        except Exception as exc:  # offline, unknown tag, ...
            raise RuntimeError(
                f"cannot load pretrained weights for {name!r} ({exc}); pass --weights PATH "
                "to a local checkpoint, or --weights random for a test run"
            ) from None
    else:
        model = timm.create_model(name, pretrained=False, num_classes=0, **model_kwargs)
        load_local_weights(model, Path(weights))
    model.eval().requires_grad_(False)
    # timm's own answer for the model's input normalisation (its pretrained config, or
    # the architecture's default), as timm's transforms would use it.
    data_config = resolve_model_data_config(model)
    mean = tuple(float(v) for v in data_config.get("mean", IMAGENET_MEAN))
    std = tuple(float(v) for v in data_config.get("std", IMAGENET_STD))
    num_blocks = len(model.blocks)
    block = block or num_blocks
    if not 1 <= block <= num_blocks:
        raise ValueError(f"block {block}: {name} has blocks 1..{num_blocks}")
    grid = tuple(model.patch_embed.grid_size)
    image_size = model.patch_embed.img_size[0]
    return Encoder(model, name, weights if weights in ("pretrained", "random") else
                   str(Path(weights).resolve()), _state_hash(model), block, mean, std,
                   image_size, grid, model.embed_dim)


def load_local_weights(model: torch.nn.Module, path: Path) -> None:
    """Load a local state dict into `model` strictly: every encoder weight must be there and
    nothing else may be, except a classifier head, which the frozen encoder has none of.
    Keys are cleaned and converted as timm does for its own pretrained files (wrapper
    prefixes; the original DINO/MAE/DeiT names and position-embedding sizes)."""
    import sys

    from timm.models import clean_state_dict

    if not path.is_file():
        raise FileNotFoundError(f"--weights {path}: no such checkpoint file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # not a torch file, truncated, or a pickle of code
        raise ValueError(f"{path}: cannot load as weights ({str(exc).splitlines()[0]})") from None
    if isinstance(state, dict):
        state = state.get("model", state.get("state_dict", state))
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a state dict (a {type(state).__name__})")
    state = clean_state_dict(state)
    convert = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    if convert is not None:
        state = convert(state, model)
    own = model.state_dict()
    state = {k: v for k, v in state.items() if k in own or not k.startswith("head")}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise ValueError(
            f"{path}: does not fit {type(model).__name__}: "
            + "; ".join(f"{len(keys)} {what}, e.g. {keys[:3]}" for what, keys in
                        (("missing weights", missing), ("unexpected keys", unexpected)) if keys)
            + " (another architecture or block count?)")
    model.load_state_dict(state, strict=True)  # shapes: a mismatch raises, naming the key


@torch.no_grad()
def extract_tokens(
    encoder: Encoder, images: np.ndarray | torch.Tensor, *, device: str | torch.device = "cpu",
    autocast: bool = False,
) -> np.ndarray:
    """uint8 images [B, H, W, 3] at the encoder's size → float16 tokens [B, T, D]."""
    x = torch.as_tensor(images).to(device, non_blocking=True)
    x = x.permute(0, 3, 1, 2).float().div_(255.0)  # (B, 3, H, W) in [0, 1]
    mean = torch.tensor(encoder.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(encoder.std, device=x.device).view(1, 3, 1, 1)
    x = (x - mean) / std  # ImageNet normalisation (the authors skipped it: a flaw)
    model: Any = encoder.model.to(x.device)  # a timm ViT (forward_intermediates)
    with torch.autocast(x.device.type, torch.bfloat16, enabled=autocast):
        tokens = model.forward_intermediates(
            x, indices=[encoder.block - 1], norm=False, stop_early=True,
            output_fmt="NLC", intermediates_only=True,
        )[0]  # (B, T, D): patch tokens only, no final norm
    return tokens.float().cpu().numpy().astype(np.float16)


def resize_for(encoder: Encoder, images: np.ndarray) -> np.ndarray:
    """Resize uint8 images [B, H, W, 3] to the encoder's input size (bicubic, antialiased)."""
    size = encoder.image_size
    if images.shape[1:3] == (size, size):
        return images
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic",
                                        antialias=True, align_corners=False)
    return x.clamp_(0, 255).round_().byte().permute(0, 2, 3, 1).numpy()


def finished_with(out: str | Path, encoder: Encoder) -> bool:
    """True if `out` is a finished split of this encoder's tokens; False if unfinished.
    A split of another encoder (or other weights, or block) is refused: mixing
    encoders in one directory is never right."""
    from slotsweep.data.format import MANIFEST, ShardError, read_manifest

    if not (Path(out) / MANIFEST).is_file():
        return False
    found = read_manifest(out).get("attributes", {})
    wanted = encoder.attributes()
    if any(found.get(k) != wanted[k] for k in ("encoder", "weights_hash", "block")):
        raise ShardError(
            f"{out}: already holds features of {found.get('encoder')} "
            f"({found.get('weights_hash')}, block {found.get('block')}), not "
            f"{encoder.name} ({encoder.weights_hash}, block {encoder.block}); "
            "choose another --out"
        )
    return True


def add_features(
    src: str | Path, out: str | Path, encoder: Encoder, *, batch_size: int = 64,
    device: str = "cpu", rows_per_shard: int = 1024, progress=None,
) -> Path:
    """Copy the image shards at `src` to `out` with a `features` column added.

    Resumable: rerunning continues after the last complete output shard. Refuses an
    output directory written with another encoder (mixing encoders is never right).
    """
    from slotsweep.data.format import ShardError
    from slotsweep.data.reader import ShardDataset
    from slotsweep.data.writer import ShardWriter

    source = ShardDataset(src)
    if "image" not in source.columns:
        raise ShardError(f"{src}: has no image column to encode")
    attributes = {**source.manifest.get("attributes", {}), **encoder.attributes(),
                  "features_of": str(Path(src).resolve())}
    out = Path(out)
    if finished_with(out, encoder):
        log.info("%s: already complete, nothing to do", out)
        return out
    with ShardWriter(out, rows_per_shard=rows_per_shard, attributes=attributes,
                     resume=True) as writer:
        for start in range(writer.rows_done, len(source), batch_size):
            rows = np.arange(start, min(start + batch_size, len(source)))
            batch = source.get_batch(rows)
            batch["features"] = extract_tokens(encoder, resize_for(encoder, batch["image"]),
                                               device=device, autocast=device != "cpu")
            writer.write(batch)
            if progress:
                progress(len(rows))
    return out
