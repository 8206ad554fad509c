"""Frozen ViT tokens: a real (randomly initialised, small) timm ViT, real shards."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slotsweep.config import build_config
from slotsweep.data.format import ShardError, read_manifest
from slotsweep.data.reader import ShardDataset, verify
from slotsweep.data.sources.features import add_features, create_encoder, extract_tokens
from slotsweep.training.loop import fit

SMALL_VIT = {"img_size": 32, "depth": 3, "embed_dim": 48, "num_heads": 2}


@pytest.fixture(scope="module")
def encoder():
    # The DINO tag: its pretrained config carries ImageNet mean/std, as the real run uses.
    return create_encoder("vit_base_patch16_224.dino", weights="random", block=2, **SMALL_VIT)


def test_tokens_are_block_n_without_final_norm_or_prefix(encoder):
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    tokens = extract_tokens(encoder, images)
    assert tokens.dtype == np.float16 and tokens.shape == (3, 4, 48)  # 2x2 grid, no CLS
    # Independently: ImageNet-normalise, run patch embed + blocks 1..2 by hand.
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - mean) / std
    m = encoder.model
    with torch.no_grad():
        h = m.norm_pre(m._pos_embed(m.patch_embed(x)))
        for blk in m.blocks[:2]:
            h = blk(h)
    expected = h[:, m.num_prefix_tokens:].numpy()
    np.testing.assert_allclose(tokens.astype(np.float32), expected, rtol=2e-2, atol=2e-3)
    assert encoder.attributes()["normalisation"]["mean"] == [0.485, 0.456, 0.406]


def test_add_features_to_image_shards_then_train_on_them(dsprites16, encoder, tmp_path):
    out = {}
    for split in ("train", "val"):
        out[split] = add_features(dsprites16 / split, tmp_path / split, encoder,
                                  batch_size=16, rows_per_shard=24)
        verify(out[split])
    ds = ShardDataset(out["train"])
    assert ds[0]["features"].shape == (4, 48) and ds[0]["features"].dtype == np.float16
    assert set(ds.columns) >= {"image", "segmentation", "objects", "features"}
    attrs = read_manifest(out["train"])["attributes"]
    assert attrs["encoder"] == "vit_base_patch16_224.dino" and attrs["weights"] == "random"
    assert attrs["token_grid"] == [2, 2] and attrs["dataset"].startswith("synthetic")
    # A DINOSAUR model trains on the result.
    cfg = build_config({
        "model": {"encoder": "features", "decoder": "mlp_patch", "feature_dim": 48,
                  "num_patches": 4, "slot_size": 16, "mlp_hidden_size": 16, "num_slots": 3,
                  "decoder_hidden": [32]},
        "data": {"train": str(out["train"]), "val": str(out["val"])},
        "train": {"steps": 4, "batch_size": 8, "device": "cpu", "log_every": 2},
        "eval": {"every": 4, "max_images": 16},
    })
    result = fit(cfg, workdir=tmp_path / "run", log=None)
    assert np.isfinite(result["val/fg_ari"]) and np.isfinite(result["train/loss"])
    # Rerunning is a no-op; another encoder into the same directory is refused.
    assert add_features(dsprites16 / "train", out["train"], encoder) == out["train"]
    other = create_encoder("vit_base_patch16_224.dino", weights="random", seed=1, block=2,
                           **SMALL_VIT)
    with pytest.raises(ShardError, match="already holds features of"):
        add_features(dsprites16 / "train", out["train"], other)


def test_wrong_feature_size_for_the_model_names_the_column(dsprites16, encoder, tmp_path):
    out = add_features(dsprites16 / "val", tmp_path / "val", encoder, batch_size=16)
    with pytest.raises(ShardError, match=r"features.*768|768.*features"):
        ShardDataset(out, expect_shapes={"features": (4, 768)})


def test_local_weights_load_strictly(encoder, tmp_path):
    """A state dict from a file reproduces the encoder exactly (a classifier head in it is
    dropped, DDP's `module.` prefix cleaned, as timm does); one that does not fit the
    architecture is refused naming the file and the keys, not half loaded."""
    state = {f"module.{k}": v for k, v in encoder.model.state_dict().items()}
    state["head.weight"] = torch.zeros(10, 48)  # a classifier: not part of the encoder
    good = tmp_path / "good.pt"
    torch.save({"model": state}, good)
    loaded = create_encoder("vit_base_patch16_224.dino", weights=str(good), block=2,
                            **SMALL_VIT)
    assert loaded.weights_hash == encoder.weights_hash
    assert loaded.weights == str(good.resolve())

    extra = dict(encoder.model.state_dict(), **{"blocks.7.attn.qkv.weight": torch.zeros(1)})
    torch.save(extra, tmp_path / "extra.pt")
    with pytest.raises(ValueError, match=r"extra\.pt: does not fit.*1 unexpected keys.*blocks\.7"):
        create_encoder("vit_base_patch16_224.dino", weights=str(tmp_path / "extra.pt"),
                       block=2, **SMALL_VIT)
    partial = {k: v for k, v in encoder.model.state_dict().items() if not k.startswith("blocks.2")}
    torch.save(partial, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match=r"partial\.pt: does not fit.*missing weights.*blocks\.2"):
        create_encoder("vit_base_patch16_224.dino", weights=str(tmp_path / "partial.pt"),
                       block=2, **SMALL_VIT)
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=r"junk\.pt: cannot load as weights"):
        create_encoder("vit_base_patch16_224.dino", weights=str(tmp_path / "junk.pt"),
                       block=2, **SMALL_VIT)
