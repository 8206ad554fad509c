"""Orchestration overhead of a sweep: wall time against the same trials run bare.

Runs 8 short trials (the tiny 16x16 model, 2 at a time on a local 2-CPU Ray instance)
through the real sweep service — Ray Tune, Optuna, MLflow tracking, checkpoints — and
compares its wall time with the baseline measured in the same run: the same 8 trial
configs trained by two plain worker processes (a multiprocessing pool of 2, each
calling `fit`; no Ray, no MLflow). Both pay for starting workers that import torch;
the difference is what orchestration costs. Also shown: the sum of the trials' time
inside `fit`, Ray's start-up, and where the CPU went during the sweep (read from /proc
for the driver and every process Ray started, against the CPU `fit` took in the
baseline): on 2 cores, every CPU-second the driver or Ray's daemons take is one the
trials wait for. The 1-minute load average before each part is printed: on a busy
machine Ray's trials (niceness +15) lose more than the plain processes (BENCHMARKS.md).

    python benchmarks/sweep.py [--trials 8] [--steps 200] [--eval-every 20]
    python benchmarks/sweep.py --smoke       # 2 trials x 4 steps; CI runs it
    python benchmarks/sweep.py --no-baseline # the sweep alone, e.g. under py-spy
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import shutil
import tempfile
import threading
import time
from pathlib import Path

import yaml

from slotsweep.data.sources.synthetic import write_dsprites

RAY_DAEMONS, WORKERS = "Ray's daemons", "trial workers"  # the roles of the processes Ray starts


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


def _fit_timed(job: tuple[dict, str]) -> tuple[float, float]:
    """Wall and CPU seconds of one `fit` in a plain process."""
    from slotsweep.config import build_config
    from slotsweep.training.loop import fit

    tree, workdir = job
    start, cpu = time.perf_counter(), time.process_time()
    fit(build_config(tree), workdir=workdir, log=None)
    return time.perf_counter() - start, time.process_time() - cpu


TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float] | None:
    """Parent pid and CPU seconds so far (user + system) of a process; None if it ended."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK


def _role(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return RAY_DAEMONS
    if "workers/default_worker.py" in cmd or (cmd.startswith("ray::") and not cmd.startswith(
            ("ray::DashboardAgent", "ray::RuntimeEnvAgent"))):
        return WORKERS  # default_worker.py, retitled ray::IDLE, then ray::ImplicitFunc
    return RAY_DAEMONS  # GCS, raylet, agents, log and autoscaler monitors


class ProcessTree:
    """The processes this one started (Ray's), found in /proc: each pid's parent and
    role are read once, so a reading costs a directory listing and one stat per process
    of ours (a full /proc scan took ~15 ms of CPU on the 2-core VM)."""

    def __init__(self) -> None:
        self.roles: dict[int, str] = {os.getpid(): "driver"}
        self.others: set[int] = set()

    def cpu(self) -> dict[str, dict[int, float]]:
        """CPU seconds so far of each of our processes, by role and pid."""
        out: dict[str, dict[int, float]] = {WORKERS: {}, RAY_DAEMONS: {}}
        for pid in sorted(int(p) for p in os.listdir("/proc") if p.isdigit()):
            if pid in self.others or pid == os.getpid():
                continue
            found = _stat(pid)
            if found is None:
                continue
            if pid not in self.roles:
                if found[0] not in self.roles:  # a parent's pid is below its child's
                    self.others.add(pid)
                    continue
                self.roles[pid] = _role(pid)
            out[self.roles[pid]][pid] = found[1]
        return out


class CpuWatch:
    """CPU seconds per role of the processes Ray starts, read from /proc every
    `period` s while a sweep runs: Tune ends its trial actors when `fit` returns, so
    their last reading is the one taken before that (they lose at most `period`)."""

    def __init__(self, period: float = 1.0) -> None:
        self.tree = ProcessTree()
        self.period, self.first = period, self.tree.cpu()
        self.last = {role: dict(pids) for role, pids in self.first.items()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(self.period):
            for role, pids in self.tree.cpu().items():
                self.last[role].update(pids)

    def __enter__(self) -> CpuWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        for role, pids in self.tree.cpu().items():
            self.last[role].update(pids)

    def used(self) -> dict[str, float]:
        """CPU seconds per role between the start and the end of the watch."""
        return {role: sum(cpu - self.first[role].get(pid, 0.0) for pid, cpu in pids.items())
                for role, pids in self.last.items()}


def run_swept(sweep, args) -> dict[str, float]:
    """The sweep on a fresh local Ray instance: its wall time, Ray's start-up, and the
    CPU seconds its driver, trial workers and Ray's daemons used while it ran."""
    import ray

    from slotsweep.sweep.cluster import connect
    from slotsweep.sweep.driver import run_sweep

    t0 = time.perf_counter()
    connect("local", num_cpus=2)
    out = {"ray": time.perf_counter() - t0, "load": os.getloadavg()[0]}
    with CpuWatch() as watch:
        driver = time.process_time()
        t0 = time.perf_counter()
        result = run_sweep(sweep, verbose=0)
        out["wall"] = time.perf_counter() - t0
        out["driver"] = time.process_time() - driver
    out.update(watch.used())
    ray.shutdown()
    assert len(result.trials) == args.trials, result.trials
    out["params"] = [rec.params for rec in result.trials]
    # Tune's own clock of each trial: from its trainable's start to its last report.
    out["trials"] = sum(float(rec.metrics["time_total_s"]) for rec in result.trials)
    return out


def run_plain(sweep, params: list[dict], root: Path) -> dict[str, float]:
    """The baseline: the same trial configs on a pool of 2 plain processes."""
    jobs = [(sweep.trial_config(p).to_dict(), str(root / f"plain-{i}"))
            for i, p in enumerate(params)]
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        timed = pool.map(_fit_timed, jobs, chunksize=1)
    return {"wall": time.perf_counter() - t0, "load": load,
            "inside": sum(t for t, _ in timed), "fit_cpu": sum(c for _, c in timed)}


def print_tables(args, swept: dict, plain: dict | None) -> None:
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; torch threads per "
          f"trial {os.environ['OMP_NUM_THREADS']}; {args.trials} trials x {args.steps} "
          f"steps (16x16, batch 16), a report + checkpoint every {args.eval_every} "
          f"steps, 2 concurrent; 1-minute load before the sweep {swept['load']:.1f}"
          + (f", before the baseline {plain['load']:.1f}" if plain else "")
          + (" — SMOKE RUN: tiny, not a measurement" if args.smoke else "") + "\n")
    print("| measure | seconds |\n|---|---|")
    print(f"| Ray start-up (`ray.init`, local; not in the sweep time) | {swept['ray']:.1f} |")
    if plain:
        print(f"| sum of the trials' time inside `fit` | {plain['inside']:.1f} |")
        print(f"| baseline: 2 plain processes calling `fit` | {plain['wall']:.1f} |")
    print(f"| sweep (Tune + Optuna + MLflow + checkpoints) | {swept['wall']:.1f} |")
    if plain:
        print(f"| orchestration overhead (sweep / baseline - 1) | "
              f"{100 * (swept['wall'] / plain['wall'] - 1):.0f}% |")
    print("\n| CPU during the sweep | CPU seconds |\n|---|---|")
    print(f"| driver (Tune, Optuna, MLflow client, snapshots) | {swept['driver']:.1f} |")
    print(f"| Ray's daemons (GCS, raylet, agents, monitors) | {swept[RAY_DAEMONS]:.1f} |")
    print(f"| trial workers (`fit`, Tune's trainable, imports) | {swept[WORKERS]:.1f} |")
    if plain:
        print(f"| `fit` in the baseline (the same trials) | {plain['fit_cpu']:.1f} |")
    print(f"| cores x sweep wall time | {2 * swept['wall']:.1f} |")
    if plain:
        print_split(args, swept, plain)


# The paper's trial (PAPER.md): 500k steps; the paper-scale model trains at ~73 steps/s
# on an H200 (docs/binding.md); a sweep reports (evaluation + checkpoint) every
# `eval.every` = 5,000 steps by default (slotsweep/config.py).
PAPER_STEPS, PAPER_STEPS_PER_S, PAPER_EVERY = 500_000, 73.0, 5_000


def split(args, swept: dict, plain: dict) -> dict[str, float]:
    """The overhead split in two, from Tune's clock of each trial: what a trial takes
    longer inside the sweep than `fit` alone (per report: `tune.report` waits for the
    driver, Tune persists the checkpoint), and the core-seconds no trial ran (per trial:
    the sweep's own start and end, Optuna's suggestion, the actor's reset, setting up).
    Then the overhead those two give a trial of the paper's length."""
    reports = args.trials * (args.steps // args.eval_every)
    per_report = (swept["trials"] - plain["inside"]) / reports
    per_trial = (2 * swept["wall"] - swept["trials"]) / args.trials
    paper_trial = PAPER_STEPS / PAPER_STEPS_PER_S
    paper = (per_trial + per_report * PAPER_STEPS / PAPER_EVERY) / paper_trial
    return {"reports": reports, "per_report": per_report, "per_trial": per_trial,
            "paper_trial": paper_trial, "paper": paper}


def print_split(args, swept: dict, plain: dict) -> None:
    s = split(args, swept, plain)
    print("\n| where the overhead goes | seconds |\n|---|---|")
    print(f"| sum of the trials' time in the sweep (Tune's `time_total_s`) | "
          f"{swept['trials']:.1f} |")
    print(f"| in a trial, per report (sweep trial time - `fit` time) / {s['reports']} "
          f"reports | {s['per_report']:.3f} |")
    print(f"| between trials, per trial (cores x wall - trial time) / {args.trials} "
          f"trials | {s['per_trial']:.2f} |")
    print(f"| at the paper's trial length ({PAPER_STEPS:,} steps at {PAPER_STEPS_PER_S:.0f} "
          f"steps/s = {s['paper_trial']:,.0f} s, a report every {PAPER_EVERY:,} steps) | "
          f"{100 * s['paper']:.2f}% |")



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--eval-every", type=int, default=20,
                        help="steps between evaluations (each one is a report + checkpoint)")
    parser.add_argument("--no-baseline", action="store_true",
                        help="run the sweep alone (profiling); no overhead row")
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

        from slotsweep.sweep.load import load_sweep

        sweep = load_sweep(str(sweep_yaml(root, data, args.trials, args.steps, args.eval_every)))
        swept = run_swept(sweep, args)
        plain = None if args.no_baseline else run_plain(sweep, swept["params"], root)
        print_tables(args, swept, plain)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
