"""The trainer on a GPU, measured against the card's own arithmetic floor (issue 9).

For the paper's multi-dSprites model and DINOSAUR, each in float32 eager, bf16 (autocast)
and bf16 + torch.compile: steps/s, achieved TFLOP/s (FlopCounterMode on one step) as a
share of the card's bf16 and float32 matrix-multiply rates measured in the same run,
peak GPU memory, and data-loader wait (host time spent getting the next batch). Then
1, 2 and 4 trials of the small model packed on one GPU (separate processes, aggregate
steps/s), and a check that bf16 training follows float32's loss curve.

Configurations: the shipped `configs/dsprites_covloss.yaml` (64x64, 5 slots, slot 64,
covloss head P = 1024, batch 64) on synthetic colored multi-dSprites scenes, and
`configs/coco_dinosaur.yaml` (196 x 768 tokens, 7 slots, slot 256, MLP [2048] x 3,
batch 64) on random float16 feature shards of the ViT-B/16 schema; the script writes
both datasets itself. Steps go through the trainer's own pieces (`training_batches`,
`make_optimizer`, `train_step`), so staging, pinned memory and fused Adam are measured
as `fit` runs them.

    python benchmarks/gpu.py --out benchmarks/out/gpu.json      # a GPU machine, < 8 min
    python benchmarks/gpu.py --smoke --out /tmp/gpu-smoke.json  # the CPU, tiny, CI
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from slotsweep.config import TrialConfig, load_config
from slotsweep.data.batches import Batches, free_device_bytes, stage_on_device
from slotsweep.data.sources.synthetic import write_dsprites
from slotsweep.data.writer import ShardWriter
from slotsweep.models import build_model
from slotsweep.training.loop import make_optimizer, seed_everything, train_step, training_batches

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {
    "dsprites-covloss": ROOT / "configs" / "dsprites_covloss.yaml",
    "dinosaur": ROOT / "configs" / "coco_dinosaur.yaml",
}
MODES = {  # name: (train.precision, compiled)
    "fp32 eager": ("fp32", False),
    "bf16": ("bf16", False),
    "bf16+compile": ("bf16", True),
}
# Smoke sizes: the same code on models small enough for a CI CPU.
SMOKE_MODEL = {
    "dsprites-covloss": {
        "model": {"resolution": 16, "slot_size": 16, "mlp_hidden_size": 32,
                  "encoder_channels": 16, "decoder_channels": 16, "decoder_layers": 2},
        "loss": {"proj_dim": 32},
    },
    "dinosaur": {
        "model": {"feature_dim": 32, "num_patches": 16, "slot_size": 16,
                  "mlp_hidden_size": 32, "decoder_hidden": [32]},
    },
}


@dataclasses.dataclass(frozen=True)
class Plan:
    """How much of everything to run; `smoke` shrinks it to seconds on a CPU."""

    smoke: bool
    device: str
    rows: int = 4096  # scenes / feature rows written per configuration
    batch_size: int = 64
    warmup_steps: int = 10
    seconds_per_row: float = 5.0  # timed steps are calibrated to about this long
    max_steps: int = 3000
    compile_backend: str = "inductor"
    matmul_n: int = 8192
    matmul_seconds: float = 1.0
    pack: tuple[int, ...] = (1, 2, 4)
    pack_seconds: float = 6.0
    numerics_steps: int = 200
    numerics_last: int = 50
    tolerance: float = 0.05  # |mean last losses bf16 - fp32| / fp32

    @classmethod
    def make(cls, smoke: bool, device: str, quick: bool = False) -> Plan:
        if quick and not smoke:  # the first minutes of a device lease (device_binding.sh)
            return cls(smoke=False, device=device, seconds_per_row=2.0, matmul_seconds=0.5,
                       pack=(1, 2), pack_seconds=4.0, numerics_steps=100, numerics_last=25)
        if not smoke:
            return cls(smoke=False, device=device)
        # compile with dynamo's eager backend: inductor's C++ build takes ~75 s cold
        return cls(smoke=True, device="cpu", rows=64, batch_size=8, warmup_steps=1,
                   seconds_per_row=0.0, max_steps=3, compile_backend="eager", matmul_n=256,
                   matmul_seconds=0.1,
                   # every packed trial pays a torch import (~3 s on 2 busy cores): no 4 here
                   pack=(1, 2), pack_seconds=1.0, numerics_steps=24, numerics_last=8)


# ---------------------------------------------------------------- data and configs


def write_data(root: Path, plan: Plan) -> dict[str, Path]:
    """Training shards for both configurations, in the schema `prepare` writes."""
    res = 16 if plan.smoke else 64
    scenes = write_dsprites(root / "dsprites", num=plan.rows, seed=0, resolution=res)
    tokens, dim = (16, 32) if plan.smoke else (196, 768)
    rng = np.random.default_rng(0)
    with ShardWriter(root / "features", rows_per_shard=1024,
                     attributes={"encoder": "random-benchmark-features"}) as writer:
        for lo in range(0, plan.rows, 1024):
            n = min(1024, plan.rows - lo)
            writer.write({"id": np.arange(lo, lo + n, dtype=np.int64),
                          "features": rng.standard_normal((n, tokens, dim), np.float32)
                          .astype(np.float16)})
    return {"dsprites-covloss": scenes, "dinosaur": root / "features"}


def trial_config(name: str, data: Path, plan: Plan, precision: str, **extra) -> TrialConfig:
    overrides = {
        "data.train": str(data), "data.val": str(data), "data.synthetic": False,
        "train.device": plan.device, "train.precision": precision,
        "train.compile": False,  # compiled here, with the plan's backend
        "train.batch_size": plan.batch_size,
        "train.warmup_steps": 100,  # the configs' 10k would keep lr ~0 for these steps
        **extra,
    }
    if plan.smoke:
        overrides["data.num_workers"] = 0
        for section, values in SMOKE_MODEL[name].items():
            overrides.update({f"{section}.{k}": v for k, v in values.items()})
    return load_config(CONFIGS[name], overrides)


# ---------------------------------------------------------------- measuring


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_tflops(device: torch.device, dtype: torch.dtype, n: int, seconds: float = 1.0):
    """The card's dense matrix-multiply rate: n x n @ n x n, repeated for `seconds`."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    count, start = 0, time.perf_counter()
    while True:
        for _ in range(10):
            a @ b
        count += 10
        sync(device)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return 2 * n**3 * count / elapsed / 1e12


def peak_memory_gb(device: torch.device) -> float:
    """GPU: peak allocated since the last reset; CPU: the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def reset_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


class Run:
    """One model, optimizer and batch stream, stepped as `fit` steps them."""

    def __init__(self, cfg: TrialConfig, *, compiled: bool, backend: str) -> None:
        seed_everything(cfg.seed)
        self.cfg = cfg
        self.device = torch.device(cfg.train.device)
        self.model = build_model(cfg.model, cfg.loss).to(self.device).train()
        self.forward = torch.compile(self.model, backend=backend) if compiled else self.model
        self.optimizer = make_optimizer(self.model, cfg.train.lr, self.device)
        split = Batches.open(cfg.data.train, cfg.model, eval=False)
        self.staged = stage_on_device(cfg.data, nbytes=split.nbytes(), device=self.device,
                                      free_bytes=free_device_bytes(self.device))
        self.batches = training_batches(split, cfg, self.device, start=0)
        self.step = 0
        self.data_wait = 0.0

    def run(self, steps: int, losses: torch.Tensor | None = None) -> float:
        """Take `steps` steps; returns their wall time (synchronised at the end only)."""
        start = time.perf_counter()
        for _ in range(steps):
            t0 = time.perf_counter()
            batch = next(self.batches)
            self.data_wait += time.perf_counter() - t0
            terms = train_step(self.forward, self.optimizer, batch, self.cfg, self.step,
                               self.device)
            if losses is not None:
                losses[self.step] = terms["loss"].detach()  # stays on the device
            self.step += 1
        sync(self.device)
        return time.perf_counter() - start

    def host_syncs(self, steps: int = 3) -> int | None:
        """GPU only: synchronising CUDA calls the host made in `steps` steps (want 0)."""
        if self.device.type != "cuda":
            return None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                for _ in range(steps):
                    train_step(self.forward, self.optimizer, next(self.batches), self.cfg,
                               self.step, self.device)
                    self.step += 1
            finally:
                torch.cuda.set_sync_debug_mode("default")
        sync(self.device)
        return sum("synchronizing" in str(w.message) for w in caught)

    def count_flops(self) -> float:
        """FLOPs of one eager step (forward + backward + loss), counted by torch."""
        batch = next(self.batches)
        with FlopCounterMode(display=False) as counter:
            train_step(self.model, self.optimizer, batch, self.cfg, self.step, self.device)
        self.step += 1
        return counter.get_total_flops()


def timed_steps(run: Run, plan: Plan) -> tuple[int, float]:
    """Steps (calibrated to about `plan.seconds_per_row`) and their wall time."""
    probe = max(1, min(10, plan.max_steps))
    per_step = run.run(probe) / probe
    steps = int(min(plan.max_steps, max(probe, plan.seconds_per_row / max(per_step, 1e-6))))
    run.data_wait = 0.0
    return steps, run.run(steps)


def measure_row(name: str, mode: str, data: Path, plan: Plan, flops: dict[str, float],
                stage: str = "auto") -> dict:
    precision, compiled = MODES[mode]
    cfg = trial_config(name, data, plan, precision, **{"data.stage": stage})
    device = torch.device(cfg.train.device)
    reset_memory(device)
    run = Run(cfg, compiled=compiled, backend=plan.compile_backend)
    if name not in flops:
        flops[name] = run.count_flops()
    start = time.perf_counter()
    run.run(1)  # compiles, when compiling
    first_step = time.perf_counter() - start
    run.run(plan.warmup_steps)
    syncs = run.host_syncs()
    steps, seconds = timed_steps(run, plan)
    row = {
        "config": name, "mode": mode, "stage": stage,
        "data": "staged" if run.staged else "streamed",
        "batch": cfg.train.batch_size, "steps": steps, "steps_per_s": steps / seconds,
        "ms_per_step": 1e3 * seconds / steps, "gflop_per_step": flops[name] / 1e9,
        "tflops": flops[name] * steps / seconds / 1e12,
        "peak_memory_gb": peak_memory_gb(device),
        "data_wait_ms": 1e3 * run.data_wait / steps,
        "data_wait_pct": 100 * run.data_wait / seconds, "first_step_s": first_step,
        "host_syncs_per_step": None if syncs is None else syncs / 3,
    }
    del run
    torch._dynamo.reset()
    return row


def loss_curve(name: str, data: Path, plan: Plan, precision: str) -> np.ndarray:
    cfg = trial_config(name, data, plan, precision)
    run = Run(cfg, compiled=False, backend=plan.compile_backend)
    losses = torch.zeros(plan.numerics_steps, device=run.device)
    run.run(plan.numerics_steps, losses)
    return losses.cpu().numpy()


def numerics(name: str, data: Path, plan: Plan) -> dict:
    """bf16 against float32 from the same seed, weights and batches."""
    fp32 = loss_curve(name, data, plan, "fp32")
    bf16 = loss_curve(name, data, plan, "bf16")
    last = plan.numerics_last
    a, b = float(fp32[-last:].mean()), float(bf16[-last:].mean())
    rel = abs(b - a) / abs(a)
    return {"config": name, "steps": plan.numerics_steps, "last": last,
            "fp32_first": float(fp32[0]), "fp32_last_mean": a, "bf16_last_mean": b,
            "rel_diff": rel, "tolerance": plan.tolerance,
            "finite": bool(np.isfinite(bf16).all()), "ok": bool(rel < plan.tolerance)}


# ---------------------------------------------------------------- packing


def pack_worker(spec: dict) -> None:
    """One packed trial: warm up, wait for the others, step for a fixed time."""
    plan = Plan(**{**spec["plan"], "pack": tuple(spec["plan"]["pack"])})
    precision, compiled = MODES[spec["mode"]]
    cfg = trial_config(spec["config"], Path(spec["data"]), plan, precision)
    run = Run(cfg, compiled=compiled, backend=plan.compile_backend)
    run.run(1 + plan.warmup_steps)
    barrier = Path(spec["barrier"])
    (barrier / f"ready-{spec['index']}").touch()
    deadline = time.monotonic() + 600
    while len(list(barrier.glob("ready-*"))) < spec["trials"]:
        if time.monotonic() > deadline:
            raise SystemExit("the other packed trials never became ready")
        time.sleep(0.01)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < plan.pack_seconds:
        run.run(5)  # synchronises: the clock sees finished steps only
        steps += 5
    print(json.dumps({"steps": steps, "seconds": time.perf_counter() - start}))


def packing(name: str, data: Path, plan: Plan, mode: str, root: Path) -> list[dict]:
    rows = []
    for trials in plan.pack:
        barrier = Path(tempfile.mkdtemp(dir=root, prefix=f"pack{trials}-"))
        env = dict(os.environ)
        if plan.device == "cpu":
            env["OMP_NUM_THREADS"] = "1"
        procs = []
        for index in range(trials):
            spec = {"config": name, "data": str(data), "mode": mode, "index": index,
                    "trials": trials, "barrier": str(barrier),
                    "plan": dataclasses.asdict(plan)}
            procs.append(subprocess.Popen(
                [sys.executable, __file__, "--pack-worker", json.dumps(spec)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
            ))
        results = []
        for proc in procs:
            out, err = proc.communicate(timeout=900)
            if proc.returncode != 0:
                raise RuntimeError(f"packed trial failed ({proc.returncode}):\n{err[-3000:]}")
            results.append(json.loads(out.strip().splitlines()[-1]))
        rates = [r["steps"] / r["seconds"] for r in results]
        rows.append({"config": name, "mode": mode, "trials": trials,
                     "aggregate_steps_per_s": sum(rates),
                     "per_trial_steps_per_s": sum(rates) / trials})
    base = rows[0]["aggregate_steps_per_s"]
    for row in rows:
        row["vs_one_trial"] = row["aggregate_steps_per_s"] / base
    return rows


# ---------------------------------------------------------------- report


def targets(result: dict) -> list[dict]:
    """The issue's targets, each with the measured value and whether it is met."""
    rows = {(r["config"], r["mode"]): r for r in result["rows"] if r["stage"] == "auto"}
    dino = rows[("dinosaur", "bf16+compile")]
    dino_pct = 100 * dino["tflops"] / result["matmul"]["bf16_tflops"]
    small = {m: r for (c, m), r in rows.items() if c == "dsprites-covloss"}
    speedup = small["bf16+compile"]["steps_per_s"] / small["fp32 eager"]["steps_per_s"]
    best_pack = max(r["vs_one_trial"] for r in result["packing"])
    return [
        {"target": "DINOSAUR bf16+compile step >= 40% of the bf16 matmul rate",
         "value": f"{dino_pct:.0f}%", "met": dino_pct >= 40},
        {"target": "multi-dSprites bf16+compile >= 3x float32 eager",
         "value": f"{speedup:.2f}x", "met": speedup >= 3},
        {"target": "packed trials raise aggregate throughput (small model)",
         "value": f"{best_pack:.2f}x", "met": best_pack > 1.05},
    ]


def table(result: dict) -> str:
    mm = result["matmul"]
    lines = [
        f"device: {result['device_name']} ({result['device']}), torch {result['torch']}"
        + (" — CPU SMOKE RUN: tiny models, not a measurement" if result["smoke"] else ""),
        f"measured matmul rate ({result['matmul_n']}^2): bf16 {mm['bf16_tflops']:.2f} "
        f"TFLOP/s, float32 {mm['fp32_tflops']:.2f} TFLOP/s (TF32 off)",
        "",
        "| config | mode | data | batch | steps/s | ms/step | GFLOP/step | TFLOP/s | "
        "% bf16 matmul | % fp32 matmul | peak mem (GB) | data wait ms/step (% of time) | "
        "first step (s) | host syncs/step |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['config']} | {r['mode']} | {r['data']} | {r['batch']} | "
            f"{r['steps_per_s']:.2f} | {r['ms_per_step']:.2f} | {r['gflop_per_step']:.2f} | "
            f"{r['tflops']:.3f} | {100 * r['tflops'] / mm['bf16_tflops']:.1f}% | "
            f"{100 * r['tflops'] / mm['fp32_tflops']:.1f}% | {r['peak_memory_gb']:.2f} | "
            f"{r['data_wait_ms']:.2f} ({r['data_wait_pct']:.1f}%) | {r['first_step_s']:.1f} | "
            + ("-" if r["host_syncs_per_step"] is None else f"{r['host_syncs_per_step']:.1f}")
            + " |"
        )
    lines += ["", "| packed trials | config | mode | aggregate steps/s | per trial | "
              "vs one trial |", "|---|---|---|---|---|---|"]
    for r in result["packing"]:
        lines.append(f"| {r['trials']} | {r['config']} | {r['mode']} | "
                     f"{r['aggregate_steps_per_s']:.2f} | {r['per_trial_steps_per_s']:.2f} | "
                     f"{r['vs_one_trial']:.2f}x |")
    lines += ["", "| numerics | steps | fp32 loss (step 0) | fp32 mean of last | "
              "bf16 mean of last | rel. diff | tolerance | ok |",
              "|---|---|---|---|---|---|---|---|"]
    for r in result["numerics"]:
        lines.append(f"| {r['config']} | {r['steps']} (last {r['last']}) | "
                     f"{r['fp32_first']:.5f} | {r['fp32_last_mean']:.5f} | "
                     f"{r['bf16_last_mean']:.5f} | {100 * r['rel_diff']:.2f}% | "
                     f"{100 * r['tolerance']:.0f}% | {'yes' if r['ok'] else 'NO'} |")
    lines += ["", "| target | measured | met |", "|---|---|---|"]
    for t in result["targets"]:
        lines.append(f"| {t['target']} | {t['value']} | {'yes' if t['met'] else 'no'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/out/gpu.json", help="JSON results")
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--smoke", action="store_true",
                        help="tiny models on the CPU, compile with the eager backend (CI)")
    parser.add_argument("--quick", action="store_true",
                        help="shorter timings, packing 1 and 2, numerics over 100 steps: "
                        "~3 minutes on a GPU, for the start of a lease")
    parser.add_argument("--pack-mode", default="bf16+compile", choices=list(MODES),
                        help="how the packed trials run (default: bf16+compile)")
    parser.add_argument("--pack", help="packed trial counts, e.g. 1,2,4 (default: 1,2,4; "
                        "smoke: 1,2)")
    parser.add_argument("--pack-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pack_worker:
        pack_worker(json.loads(args.pack_worker))
        return
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    plan = Plan.make(args.smoke, device, quick=args.quick)
    if args.pack:
        plan = dataclasses.replace(plan, pack=tuple(int(n) for n in args.pack.split(",")))
    dev = torch.device(plan.device)
    started = time.perf_counter()
    result = {
        "smoke": plan.smoke, "device": dev.type, "torch": torch.__version__,
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda"
        else f"{platform.machine()} CPU, {os.cpu_count()} cores",
        "matmul_n": plan.matmul_n, "plan": dataclasses.asdict(plan),
        "matmul": {
            "bf16_tflops": matmul_tflops(dev, torch.bfloat16, plan.matmul_n, plan.matmul_seconds),
            "fp32_tflops": matmul_tflops(dev, torch.float32, plan.matmul_n, plan.matmul_seconds),
        },
    }
    clock = result["section_seconds"] = {}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        """What is measured is on disk at once: a run cut short by the end of a lease
        or a timeout keeps it."""
        out.write_text(json.dumps(result, indent=2) + "\n")

    def lap(name: str) -> None:
        clock[name] = time.perf_counter() - started - sum(clock.values())
        print(f"[{time.perf_counter() - started:5.0f} s] {name} done", file=sys.stderr)
        save()

    lap("matmul")
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp:
        root = Path(tmp)
        data = write_data(root, plan)
        lap("data")
        flops: dict[str, float] = {}
        rows = result["rows"] = []
        for name in CONFIGS:
            for mode in MODES:
                rows.append(measure_row(name, mode, data[name], plan, flops))
                save()
        # the other data path: streamed where auto stages (CUDA), staged where it streams
        rows.append(measure_row("dinosaur", "bf16+compile", data["dinosaur"], plan, flops,
                                stage="stream" if dev.type == "cuda" else "device"))
        lap("configurations")
        result["packing"] = packing("dsprites-covloss", data["dsprites-covloss"], plan,
                                    args.pack_mode, root)
        lap("packing")
        result["numerics"] = [numerics(name, data[name], plan) for name in CONFIGS]
        lap("numerics")
    result["targets"] = targets(result)
    result["seconds"] = time.perf_counter() - started
    text = table(result)
    print(text)
    print(f"\n{result['seconds']:.0f} s in all")
    out.write_text(json.dumps({**result, "table": text}, indent=2) + "\n")
    if not all(math.isfinite(r["steps_per_s"]) for r in rows):
        raise SystemExit("a configuration produced no timing")


if __name__ == "__main__":
    main()
