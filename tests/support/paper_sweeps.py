"""Helpers shared by tests/unit/test_paper_sweeps.py and its end-to-end half."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slotsweep.config import TrialConfig
from slotsweep.data.sources.features import add_features, create_encoder

# The paper's models are large; these ones train a step in well under a second.
SMOKE_TOKENS, SMOKE_FEATURE_DIM = 16, 32  # a 4x4 token grid of width 32


def smoke_overrides(config: TrialConfig, shards: Path) -> dict[str, Any]:
    """Dotted overrides that shrink `config` to a few CPU seconds on the tiny shards of
    the schema its model reads. Loss, slot count and slot size stay as the sweep says."""
    m = config.model
    split = shards / ("features" if m.encoder == "features" else "images")
    out: dict[str, Any] = {
        "data.train": str(split / "train"), "data.val": str(split / "val"),
        "data.synthetic": False, "data.num_workers": 0,
        "model.mlp_hidden_size": 32,
        "train.steps": 3, "train.batch_size": 4, "train.warmup_steps": 1,
        "train.log_every": 1, "train.checkpoint_every": 3, "train.device": "cpu",
        "train.precision": "fp32", "train.compile": False,
        "eval.every": 3, "eval.batch_size": 8, "eval.max_images": 8, "eval.num_pictures": 2,
        "eval.probe_train_images": 16,
    }
    if m.encoder == "cnn":
        out.update({"model.resolution": 16, "model.encoder_channels": 8})
    else:
        out.update({"model.feature_dim": SMOKE_FEATURE_DIM, "model.num_patches": SMOKE_TOKENS})
    if m.decoder in ("broadcast_cnn", "broadcast_tconv"):
        out.update({"model.decoder_channels": 8, "model.decoder_layers": 2})
    elif m.decoder == "broadcast_mlp_upsample":  # broadcast 4x4, one upsampling to 16x16
        out.update({"model.resolution": 16, "model.broadcast_size": 4,
                    "model.decoder_channels": 8})
    else:
        out["model.decoder_hidden"] = [32]
    return out


def write_paper_shards(dsprites16: Path, root: Path) -> Path:
    """images/: the 16x16 synthetic multi-dSprites shards (image, segmentation, objects),
    the schema of `prepare dsprites` and `prepare multi-dsprites`; features/: the same
    with frozen-ViT tokens added by the real `prepare features` code from a seeded random
    4x4-patch ViT (16 tokens of 32), the schema of `prepare coco`."""
    (root / "images").symlink_to(dsprites16, target_is_directory=True)
    vit = create_encoder("vit_base_patch16_224.dino", weights="random", img_size=16,
                         patch_size=4, depth=1, embed_dim=SMOKE_FEATURE_DIM, num_heads=2)
    assert (vit.grid, vit.dim) == ((4, 4), SMOKE_FEATURE_DIM)
    for split in ("train", "val"):
        add_features(dsprites16 / split, root / "features" / split, vit, batch_size=32)
    return root
