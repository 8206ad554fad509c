"""Evaluation on the validation split: FG-ARI, mBO and reconstruction, deterministically."""

from __future__ import annotations

import torch

from slotsweep.config import TrialConfig
from slotsweep.data.batches import Batches, to_model_inputs
from slotsweep.losses import compute_losses
from slotsweep.metrics.scores import nanmean, object_metrics, stripe_score
from slotsweep.training.pictures import mask_picture, to_uint8


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    batches: Batches,
    config: TrialConfig,
    *,
    step: int,
    device: torch.device,
) -> tuple[dict[str, float], bytes | None]:
    """Mean per-image FG-ARI and mBO (images with no object skipped), loss terms, and a
    PNG of masks on the first `eval.num_pictures` validation images (None if 0).

    The model runs in eval mode: slots start from the fixed seeded draw, so the same
    checkpoint always gets the same score, and the pictures show the same images.
    """
    was_training = model.training
    model.eval()
    aris, mbos, stripes, count = [], [], [], 0
    sums: dict[str, float] = {}
    picture = None
    for batch in batches.eval_batches(config.eval.batch_size, config.eval.max_images):
        inputs, target, segmentation = to_model_inputs(batch, config.model, device)
        with torch.autocast(device.type, torch.bfloat16, enabled=config.train.precision == "bf16"):
            out = model(inputs)
        terms = compute_losses(out, target, config.loss, step=step)
        n = inputs.shape[0]
        for name, value in terms.items():
            sums[name] = sums.get(name, 0.0) + float(value) * n
        count += n
        if picture is None and config.eval.num_pictures:
            picture = _picture(batch, target, out, config)
        stripes.append(stripe_score(out["masks"]))
        if segmentation is not None:
            ari, best_overlap = object_metrics(out["masks"].float(), segmentation)
            aris.append(ari)
            mbos.append(best_overlap)
    model.train(was_training)
    metrics = {f"val/{name}": total / count for name, total in sums.items()}
    metrics["val/stripe"] = nanmean(torch.cat(stripes))
    if aris:
        metrics["val/fg_ari"] = nanmean(torch.cat(aris))
        metrics["val/mbo"] = nanmean(torch.cat(mbos))
    return metrics, picture


def _picture(batch, target, out, config: TrialConfig) -> bytes:
    """Input, reconstruction and masks of the first `eval.num_pictures` images."""
    n = config.eval.num_pictures
    images: torch.Tensor | None
    recons: torch.Tensor | None
    if config.model.target == "image":
        images, recons = to_uint8(target[:n]), to_uint8(out["recon"][:n])
    else:  # feature reconstruction: show the stored image, if the shards have one
        images, recons = batch["image"][:n] if "image" in batch else None, None
    return mask_picture(images, out["masks"][:n], recons)
