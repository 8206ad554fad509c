"""Orchestration overhead of a sweep: wall time against the same trials run bare.

Runs 8 short trials (the tiny 16x16 model, 2 at a time on a local 2-CPU Ray instance)
through the real sweep service — Ray Tune, Optuna, MLflow tracking, checkpoints — and
compares its wall time with the baseline measured in the same run: the same 8 trial
configs trained by two plain worker processes (a multiprocessing pool of 2, each
calling `fit`; no Ray, no MLflow). Both pay for starting workers that import torch;
the difference is what orchestration costs. Also shown: the sum of the trials' time
inside `fit` (one process, sequential) and Ray's start-up.

    python benchmarks/sweep.py [--trials 8] [--steps 200] [--eval-every 20]
    python benchmarks/sweep.py --smoke       # 2 trials x 4 steps; CI runs it
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import yaml

from slotsweep.data.sources.synthetic import write_dsprites


def sweep_yaml(root: Path, data: Path, trials: int, steps: int, every: int) -> Path:
    tree = {
        "config": {
            "model": {"resolution": 16, "num_slots": 3, "slot_size": 16, "mlp_hidden_size": 32,
                      "encoder_channels": 16, "decoder_channels": 16, "decoder_layers": 2},
            "data": {"train": str(data / "train"), "val": str(data / "val")},
            "train": {"steps": steps, "batch_size": 16, "warmup_steps": 10, "log_every": every,
                      "checkpoint_every": every, "device": "cpu"},
            "eval": {"every": every, "batch_size": 32, "max_images": 32, "num_pictures": 2},
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


def _fit_timed(job: tuple[dict, str]) -> float:
    from slotsweep.config import build_config
    from slotsweep.training.loop import fit

    tree, workdir = job
    start = time.perf_counter()
    fit(build_config(tree), workdir=workdir, log=None)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--eval-every", type=int, default=20,
                        help="steps between evaluations (each one is a report + checkpoint)")
    parser.add_argument("--smoke", action="store_true",
                        help="2 trials x 4 steps: the script's CI, not a measurement")
    args = parser.parse_args()
    if args.smoke:
        args.trials, args.steps, args.eval_every = 2, 4, 2
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core per trial, as Ray gives it
    root = Path(tempfile.mkdtemp(prefix="slotsweep-bench-"))
    try:
        data = root / "data"
        write_dsprites(data / "train", num=512, seed=0, resolution=16)
        write_dsprites(data / "val", num=32, seed=0, start=512, resolution=16)

        import ray

        from slotsweep.sweep.cluster import connect
        from slotsweep.sweep.driver import run_sweep
        from slotsweep.sweep.load import load_sweep

        sweep = load_sweep(str(sweep_yaml(root, data, args.trials, args.steps, args.eval_every)))
        t0 = time.perf_counter()
        connect("local", num_cpus=2)
        t_ray = time.perf_counter() - t0
        t0 = time.perf_counter()
        result = run_sweep(sweep, verbose=0)
        wall = time.perf_counter() - t0
        ray.shutdown()
        assert len(result.trials) == args.trials, result.trials

        # Baseline: the same trial configs on a pool of 2 plain processes.
        jobs = [(sweep.trial_config(rec.params).to_dict(), str(root / f"plain-{i}"))
                for i, rec in enumerate(result.trials)]
        t0 = time.perf_counter()
        with multiprocessing.get_context("spawn").Pool(2) as pool:
            inside = pool.map(_fit_timed, jobs, chunksize=1)
        pool_wall = time.perf_counter() - t0

        print(f"machine: {platform.machine()}, {os.cpu_count()} cores; torch threads per "
              f"trial {os.environ['OMP_NUM_THREADS']}; {args.trials} trials x {args.steps} "
              f"steps (16x16, batch 16), a report + checkpoint every {args.eval_every} "
              "steps, 2 concurrent"
              + (" — SMOKE RUN: tiny, not a measurement" if args.smoke else "") + "\n")
        print("| measure | seconds |\n|---|---|")
        print(f"| Ray start-up (`ray.init`, local; not in the sweep time) | {t_ray:.1f} |")
        print(f"| sum of the trials' time inside `fit` | {sum(inside):.1f} |")
        print(f"| baseline: 2 plain processes calling `fit` | {pool_wall:.1f} |")
        print(f"| sweep (Tune + Optuna + MLflow + checkpoints) | {wall:.1f} |")
        print(f"| orchestration overhead (sweep / baseline - 1) | "
              f"{100 * (wall / pool_wall - 1):.0f}% |")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
