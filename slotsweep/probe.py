"""The feature-prediction probe of a trained model (paper Table 2), from a checkpoint.

    python -m slotsweep.probe runs/dsprites_small/checkpoints/step-00020000
    python -m slotsweep.probe runs/dsprites_small          # its latest checkpoint

An MLP on the frozen slots predicts each object's shape, colour, scale and position,
matched to the objects by the Hungarian algorithm (slotsweep.training.probe).
"""

from __future__ import annotations

import argparse
import logging
import sys

from slotsweep.cli import add_common_options, positive_int, setup_logging

# Nothing above imports torch, so `--help` and a usage error answer at once.
log = logging.getLogger("slotsweep.probe")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m slotsweep.probe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a checkpoint directory (step-NNNNNNNN/), or a "
                   "run's folder or its checkpoints/ (the latest checkpoint there)")
    p.add_argument("--train-images", type=positive_int, default=5000,
                   help="training-split images the probe learns from (default: 5000)")
    p.add_argument("--seed", type=int, default=0, help="the probe's seed (default: 0)")
    add_common_options(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    setup_logging(args.verbose - args.quiet)
    import torch

    from slotsweep.config import load_config
    from slotsweep.config_io import ConfigError
    from slotsweep.models import build_model
    from slotsweep.training import checkpoint
    from slotsweep.training.probe import probe_model

    try:
        ckpt = checkpoint.resolve(args.checkpoint)
        config = load_config(ckpt / checkpoint.CONFIG)
        model = build_model(config.model, config.loss)
        model.load_state_dict(checkpoint.load(ckpt)["model"])
        log.info("probing %s", ckpt)
        scores = probe_model(model, config, torch.device("cpu"), train_images=args.train_images,
                             seed=args.seed)
    except (ConfigError, checkpoint.CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for key, value in scores.items():
        print(f"{key:<18} {value:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
