"""Orchestration overhead of a sweep: wall time against the trials' own training time.

Runs 8 short trials (the tiny 16x16 model, 2 at a time on a local 2-CPU Ray instance)
through the real sweep service — Ray Tune, Optuna, MLflow tracking, checkpoints — and
compares the sweep's wall time with the ideal: the sum of the trials' time inside
`fit` divided by the 2 CPUs. Ray start-up is reported separately. Baseline in the same
run: the same 8 trial configs trained by a plain loop of `fit` calls (no Ray, no
MLflow), one after another, whose wall time is that sum.

    python benchmarks/sweep.py [--trials 8] [--steps 60]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import yaml

from slotsweep.data.synthetic import write_dsprites


def sweep_yaml(root: Path, data: Path, trials: int, steps: int) -> Path:
    tree = {
        "config": {
            "model": {"resolution": 16, "num_slots": 3, "slot_size": 16, "mlp_hidden_size": 32,
                      "encoder_channels": 16, "decoder_channels": 16, "decoder_layers": 2},
            "data": {"train": str(data / "train"), "val": str(data / "val")},
            "train": {"steps": steps, "batch_size": 16, "warmup_steps": 10, "log_every": 20,
                      "checkpoint_every": 20, "device": "cpu"},
            "eval": {"every": 20, "batch_size": 32, "max_images": 32, "num_pictures": 2},
        },
        "search_space": {
            "loss.type": {"choice": ["none", "covloss", "cosine"]},
            "loss.beta": {"loguniform": [1e-3, 1.0], "when": {"loss.type": ["covloss", "cosine"]}},
            "loss.proj_depth": {"int": [1, 2], "when": {"loss.type": "covloss"}},
        },
        "search": {"num_samples": trials, "max_concurrent": 2, "seed": 0},
        "resources": {"cpu": 1, "gpu": 0},
        "storage": str(root / "storage"),
    }
    path = root / "bench.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core per trial, as Ray gives it
    root = Path(tempfile.mkdtemp(prefix="slotsweep-bench-"))
    try:
        data = root / "data"
        write_dsprites(data / "train", num=512, seed=0, resolution=16)
        write_dsprites(data / "val", num=32, seed=0, start=512, resolution=16)

        import ray

        from slotsweep.sweep import connect, run_sweep
        from slotsweep.sweep_spec import load_sweep
        from slotsweep.train import fit

        sweep = load_sweep(str(sweep_yaml(root, data, args.trials, args.steps)))
        t0 = time.perf_counter()
        connect("local", num_cpus=2)
        t_ray = time.perf_counter() - t0
        t0 = time.perf_counter()
        result = run_sweep(sweep, verbose=0)
        wall = time.perf_counter() - t0
        ray.shutdown()
        assert len(result.trials) == args.trials, result.trials

        # Baseline: the same trial configs, a plain loop of fit() in this process.
        inside = []
        for i, rec in enumerate(result.trials):
            cfg = sweep.trial_config(rec.params)
            start = time.perf_counter()
            fit(cfg, workdir=root / f"plain-{i}", log=None)
            inside.append(time.perf_counter() - start)
        ideal = sum(inside) / 2

        print(f"machine: {platform.machine()}, {os.cpu_count()} cores; torch threads per "
              f"trial {os.environ['OMP_NUM_THREADS']}; {args.trials} trials x {args.steps} "
              "steps (16x16, batch 16), 2 concurrent\n")
        print("| measure | seconds |\n|---|---|")
        print(f"| Ray start-up (`ray.init`, local) | {t_ray:.1f} |")
        print(f"| plain loop of `fit` (baseline, sequential) | {sum(inside):.1f} |")
        print(f"| ideal sweep on 2 CPUs (baseline / 2) | {ideal:.1f} |")
        print(f"| sweep wall time (Tune + Optuna + MLflow + checkpoints) | {wall:.1f} |")
        print(f"| overhead over ideal | {100 * (wall / ideal - 1):.0f}% |")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
