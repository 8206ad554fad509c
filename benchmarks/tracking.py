"""The tracking path under load: what logging metrics to a real `mlflow server` costs.

Both parts run against `mlflow server` on 127.0.0.1 over SQLite and over PostgreSQL
(fsync on, as deployed), started by tests/support/servers.py and ended by PID, for
N = 8, 32, 64 concurrent trials; the metrics are the 15 a covloss trial reports (METRICS).

(a) The server, as issue 32 asks: N trial-like processes each do a fixed small torch
    step, then log the metrics with one `MlflowClient.log_batch`, every step, for
    --steps steps or until --seconds have passed (a server that serves one call a second
    would otherwise hold the run for hours). Then, in the same run, the same N processes
    doing as many steps without logging: the trial slow-down is the difference in s/step.
(b) slotsweep's own path: trials never talk to MLflow. They `tune.report` to the driver,
    whose TrackingCallback calls `SweepTracker.log_result` per result, and a function
    trainable's report blocks until the driver has processed it (Ray's
    `synchronous_result_reporting=True`). One driver process here takes N trials'
    results in bursts (every trial reporting at the same step: the worst case), a burst
    --report-every steps apart, with log_result as it was (one synchronous `log_batch`) and
    as it is now (queued to MLflow's asynchronous logging), in the same run.

Lost = metric points a client logged without error minus the points the server stored
(counted in its database afterwards): must be 0. "At the paper's interval" is the time
a trial loses per report over the time between two reports: --report-every steps of
PAPER_STEP_S (default: `train.log_every` = 100 steps; trials report at evaluations, every
`eval.every` = 1,000 steps in the paper-scale config).

    python benchmarks/tracking.py [--backends sqlite,postgresql] [--n 8,32,64]
        [--steps 300] [--seconds 30] [--results 3] [--report-every 100] [--pool N]
    python benchmarks/tracking.py --smoke      # N = 2, 4 steps, 2 results; CI runs it
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import multiprocessing
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core per trial process, as Ray gives it
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no background sender (no network)
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.support.servers starts the servers

import sqlalchemy  # noqa: E402
import torch  # noqa: E402
from mlflow.entities import Metric  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from slotsweep.config import load_config  # noqa: E402
from slotsweep.sweep.tracking import SweepTracker, _log_metrics  # noqa: E402
from tests.support.servers import mlflow_server, postgres  # noqa: E402

# What a covloss trial reports at an evaluation (training/loop.py `fit`: the window's loss
# terms from losses.compute_losses, step, lr and time/*; training/evaluate.py: val/*).
METRICS = ("step", "lr", "time/steps_per_s", "time/elapsed_s", "train/loss", "train/recon",
           "train/variance", "train/covariance", "val/loss", "val/recon", "val/variance",
           "val/covariance", "val/stripe", "val/fg_ari", "val/mbo")
PAPER_CONFIG = ROOT / "configs" / "dsprites_binding64.yaml"  # the paper's 64x64 model
# The paper-scale multi-dSprites model on one H200, bf16: 69-76 steps/s (docs/binding.md);
# one report per `train.log_every` = 100 steps of it (trials really report less often:
# at every evaluation, `eval.every` = 1,000 steps in that config).
PAPER_STEP_S = 1 / 73
PAPER_LOG_EVERY = 100
BACKENDS = ("sqlite", "postgresql")
RAY_WORKER_NICENESS = 15  # Ray's default for its worker processes (BENCHMARKS.md, sweep)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] if ordered else 0.0


def metrics_at(step: int, seed: int) -> list[Metric]:
    now = int(time.time() * 1000)
    return [Metric(name, float(step if name == "step" else (seed + i) / (step + 1)), now, step)
            for i, name in enumerate(METRICS)]


def make_work() -> Callable[[], None]:
    """One fixed small training step (an MLP, batch 64, SGD) on one thread: the same
    CPU work per step in every process, logging or not. Built and run once here, before
    the trial processes fork, so none of them pays torch's first-call set-up."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(),
                                torch.nn.Linear(512, 256))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(64, 256)  # (B, features)

    def step() -> None:
        loss = (model(x) - x).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()
    return step


WORK: Callable[[], None] | None = None  # made once, inherited by every forked trial process


def trial_process(url: str | None, run_id: str | None, steps: int, seconds: float, barrier,
                  out: str) -> None:
    """A trial-like process: `steps` times the fixed work (or fewer: no step starts after
    `seconds`), each followed by one `log_batch` of METRICS when `run_id` is given.
    Writes its timings to `out`. It runs at niceness +15, as Ray starts its workers: the
    trials yield the CPU to the server, as they would if it ran on a node of its own."""
    os.nice(RAY_WORKER_NICENESS)
    work = WORK or make_work()
    client = MlflowClient(url) if run_id else None
    latencies, logged, failed, done = [], 0, 0, 0
    barrier.wait(timeout=600)  # every process starts stepping together
    start = time.perf_counter()
    for step in range(1, steps + 1):
        if time.perf_counter() - start > seconds:
            break
        work()
        done = step
        if client is not None and run_id is not None:
            t = time.perf_counter()
            try:
                client.log_batch(run_id, metrics=metrics_at(step, seed=len(latencies)))
                logged += 1
            except Exception as exc:  # noqa: BLE001 - counted: the table shows failed calls
                failed += 1
                if failed <= 2:
                    print(f"log_batch failed: {exc}", file=sys.stderr)
            latencies.append(time.perf_counter() - t)
    wall = time.perf_counter() - start
    Path(out).write_text(json.dumps({"wall": wall, "steps": done, "latencies": latencies,
                                     "logged": logged, "failed": failed}))


def run_trials(n: int, steps: int, seconds: float, folder: Path, url: str | None = None,
               run_ids: list[str] | None = None) -> list[dict]:
    """N trial processes (forked: torch and MLflow are imported, and the work and the
    client warmed up, once) run together."""
    global WORK
    WORK = WORK or make_work()
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(n)
    outs = [folder / f"trial-{i}.json" for i in range(n)]
    procs = [ctx.Process(target=trial_process, daemon=True, args=(
        url, run_ids[i] if run_ids else None, steps, seconds, barrier, str(out)))
        for i, out in enumerate(outs)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=seconds + 600)
    results = [json.loads(out.read_text()) for out in outs if out.is_file()]
    if len(results) < n:
        raise RuntimeError(f"{n - len(results)} of {n} trial processes died (see stderr)")
    for out in outs:
        out.unlink()
    return results


def found_points(store: str, run_ids: list[str]) -> int:
    """Distinct (run, metric, step) points of METRICS that the server stored for these runs,
    counted in its database (MLflow's `metrics` table) with one query: a
    `get_metric_history` per run and metric would take minutes here."""
    query = sqlalchemy.text(
        "SELECT COUNT(*) FROM (SELECT DISTINCT run_uuid, key, step FROM metrics "
        "WHERE run_uuid IN :runs AND key IN :keys) AS points"
    ).bindparams(sqlalchemy.bindparam("runs", expanding=True),
                 sqlalchemy.bindparam("keys", expanding=True))
    engine = sqlalchemy.create_engine(store)
    try:
        with engine.connect() as db:
            return int(db.execute(query, {"runs": run_ids, "keys": list(METRICS)}).scalar_one())
    finally:
        engine.dispose()


def server_row(server: tuple[str, str], n: int, steps: int, seconds: float, folder: Path,
               interval: float) -> dict:
    """Part (a) for one N: the processes logging (for at most `seconds`), then as many
    steps without logging."""
    url, store = server
    client = MlflowClient(url)
    experiment = client.create_experiment(f"raw-n{n}-{time.time_ns()}")
    run_ids = [client.create_run(experiment).info.run_id for _ in range(n)]
    warm_up = client.create_run(experiment).info.run_id  # not counted: loads the code paths
    client.log_batch(warm_up, metrics=metrics_at(0, seed=0))
    logging = run_trials(n, steps, seconds, folder, url, run_ids)
    done = sum(r["steps"] for r in logging)
    bare = run_trials(n, max(1, round(done / n)), seconds, folder)
    logged = sum(r["logged"] for r in logging) * len(METRICS)
    latencies = [x for r in logging for x in r["latencies"]]
    bare_step = sum(r["wall"] for r in bare) / sum(r["steps"] for r in bare)
    log_step = sum(r["wall"] for r in logging) / max(1, done)
    added = log_step - bare_step  # s per logged step, per trial
    return {"n": n, "steps": steps, "done": done / n, "calls": len(latencies),
            "rate": len(latencies) / max(r["wall"] for r in logging),
            "logged": logged, "lost": logged - found_points(store, run_ids),
            "failed": sum(r["failed"] for r in logging),
            "p50": percentile(latencies, 50), "p99": percentile(latencies, 99),
            "bare": bare_step, "logging": log_step, "added": added,
            "slowdown": log_step / bare_step - 1, "paper": added / interval}


class SyncTracker(SweepTracker):
    """`SweepTracker` as it was before this benchmark (commit bf018ed): the driver waits
    for one synchronous `log_batch` per result, after looking up a new run's last step."""

    def trial_run(self, trial_id: str, **kwargs) -> str:
        run_id = super().trial_run(trial_id, **kwargs)
        self._last_step.pop(run_id, None)
        return run_id

    def log_result(self, run_id: str, metrics: dict, *, step: int, timestamp_ms: int) -> bool:
        if step <= self.last_step(run_id):
            return False
        _log_metrics(self.client, run_id, metrics, step=step, timestamp_ms=timestamp_ms)
        self._last_step[run_id] = step
        return True


TRACKERS = {"synchronous (before)": SyncTracker, "queued (now)": SweepTracker}


def driver_row(server: tuple[str, str], n: int, results: int, mode: str, params: dict,
               every: int) -> dict:
    """Part (b) for one N: one driver (a fresh tracker, as a starting driver has) takes
    `results` bursts of N trials' results, a burst every `every` steps; a trial waits
    from its burst's start until log_result has returned for its own result."""
    url, store = server
    name = f"driver-{mode.split()[0]}-n{n}-{time.time_ns()}"
    tracker = TRACKERS[mode](url, name, "bench", f"bench/{name}")
    runs = [tracker.trial_run(f"t{i:03d}", name=f"t{i:03d}", params=params, tags={},
                              config_yaml="{}") for i in range(n)]
    latencies, waits, lasts = [], [], []
    interval = every * PAPER_STEP_S
    start = time.perf_counter()
    for k in range(1, results + 1):
        burst = time.perf_counter()
        for i, run in enumerate(runs):
            metrics = {m.key: m.value for m in metrics_at(k * every, seed=i)}
            t = time.perf_counter()
            tracker.log_result(run, metrics, step=k * every,
                               timestamp_ms=int(time.time() * 1000))
            latencies.append(time.perf_counter() - t)
            waits.append(time.perf_counter() - burst)
        lasts.append(waits[-1])
        time.sleep(max(0.0, burst + interval - time.perf_counter()))
    for run in runs:  # the trials end: the sweep waits until MLflow has every result
        tracker.end_trial(run, outcome="finished")
    logged = n * results * len(METRICS)
    wait = sum(waits) / len(waits)
    return {"n": n, "mode": mode, "results": n * results,
            "lost": logged - found_points(store, runs),
            "p50": percentile(latencies, 50), "p99": percentile(latencies, 99),
            "wait": wait, "last": sum(lasts) / len(lasts),
            "total": time.perf_counter() - start, "paper": wait / interval}


@contextlib.contextmanager
def tracking_server(backend: str, folder: Path, pool: int | None) -> Iterator[tuple[str, str]]:
    """`mlflow server` on 127.0.0.1 over a fresh SQLite file or PostgreSQL database
    (fsync on, as deployed), with `pool` database connections (None: MLflow's default, 5
    and 10 more on demand); yields its URL and the database's URI."""
    with contextlib.ExitStack() as stack:
        if backend == "sqlite":
            store = f"sqlite:///{folder / 'mlflow.db'}"
        else:
            store = stack.enter_context(postgres(folder / "postgres.log", fsync=True))
        env = {} if pool is None else {"MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": str(pool),
                                       "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": "0"}
        url = stack.enter_context(mlflow_server(store, folder / f"mlflow-{backend}.log",
                                                artifacts=str(folder / "artifacts"), env=env))
        yield url, store


def print_tables(server: list[dict], driver: list[dict]) -> None:
    print("\n(a) N trial processes, each logging every step to the server\n")
    print("| backend | N | steps per trial, of asked | log_batch calls | calls/s "
          "| points logged | lost | failed calls | p50 ms | p99 ms "
          "| ms/step, no logging | ms/step, logging | added ms/logged step | slow-down, "
          "logging every step | at the paper's interval |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in server:
        print(f"| {r['backend']} | {r['n']} | {r['done']:.1f} of {r['steps']} | {r['calls']} "
              f"| {r['rate']:.1f} | {r['logged']} | {r['lost']} "
              f"| {r['failed']} | {r['p50'] * 1e3:.1f} | {r['p99'] * 1e3:.1f} "
              f"| {r['bare'] * 1e3:.2f} | {r['logging'] * 1e3:.2f} | {r['added'] * 1e3:.2f} "
              f"| {r['slowdown']:.0%} | {r['paper']:.2%} |")
    print("\n(b) one driver: SweepTracker.log_result for N trials' results, in bursts\n")
    print("| backend | N | log_result | results | lost | p50 ms | p99 ms | trial's wait ms "
          "| last trial's wait ms | all results s | at the paper's interval |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in driver:
        print(f"| {r['backend']} | {r['n']} | {r['mode']} | {r['results']} | {r['lost']} "
              f"| {r['p50'] * 1e3:.1f} | {r['p99'] * 1e3:.1f} | {r['wait'] * 1e3:.1f} "
              f"| {r['last'] * 1e3:.0f} | {r['total']:.1f} | {r['paper']:.2%} |")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default=",".join(BACKENDS),
                        help="comma-separated, of: " + ", ".join(BACKENDS))
    parser.add_argument("--n", default="8,32,64", help="concurrent trials, comma-separated")
    parser.add_argument("--steps", type=int, default=300,
                        help="(a): steps per trial process, each one logged")
    parser.add_argument("--seconds", type=float, default=30,
                        help="(a): no trial process starts a step after this long")
    parser.add_argument("--results", type=int, default=3,
                        help="(b): results per trial through the driver")
    parser.add_argument("--report-every", type=int, default=PAPER_LOG_EVERY,
                        help="steps between two reports of a trial (the paper's interval)")
    parser.add_argument("--pool", type=int, default=None,
                        help="the server's database connections (MLFLOW_SQLALCHEMYSTORE_"
                             "POOL_SIZE, no overflow); default: MLflow's, 5 + 10 overflow")
    parser.add_argument("--smoke", action="store_true",
                        help="N = 2, 4 steps, 2 results: the script's CI, not a measurement")
    args = parser.parse_args()
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = sorted(set(args.backends) - set(BACKENDS))
    if unknown or not args.backends:
        parser.error(f"--backends: unknown {', '.join(unknown) or 'none given'} "
                     f"(known: {', '.join(BACKENDS)})")
    if "postgresql" in args.backends and not glob.glob("/usr/lib/postgresql/*/bin/postgres"):
        parser.error("--backends postgresql: PostgreSQL is not installed (Debian's "
                     "postgresql package); install it or pass --backends sqlite")
    try:
        args.n = [int(x) for x in args.n.split(",")]
    except ValueError:
        parser.error(f"--n: {args.n!r} is not a comma-separated list of integers")
    if args.smoke:
        args.n, args.steps, args.results = [2], 4, 2
    if min(args.n + [args.steps, args.results, args.report_every, args.pool or 1]) < 1:
        parser.error("--n, --steps, --results, --report-every and --pool must be at least 1")
    return args


def measure(backend: str, args: argparse.Namespace, root: Path, params: dict
            ) -> tuple[list[dict], list[dict]]:
    """Both parts, every N, against one server."""
    folder = root / backend
    folder.mkdir()
    server, driver = [], []
    with tracking_server(backend, folder, args.pool) as endpoints:
        for n in args.n:
            server.append({"backend": backend,
                           **server_row(endpoints, n, args.steps, args.seconds, folder,
                                        args.report_every * PAPER_STEP_S)})
            for mode in TRACKERS:
                driver.append({"backend": backend,
                               **driver_row(endpoints, n, args.results, mode, params,
                                            args.report_every)})
            print(f"{backend} N={n} done; load {os.getloadavg()[0]:.1f}", flush=True)
    return server, driver


def main() -> None:
    args = parse_args()
    params = load_config(PAPER_CONFIG).flat()  # a real trial's params, as the driver logs
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; torch {torch.__version__}; "
          f"load {os.getloadavg()[0]:.1f}"
          + (" — SMOKE RUN: tiny sizes, not a measurement" if args.smoke else ""))
    print(f"paper's interval: {args.report_every} steps x {PAPER_STEP_S * 1e3:.1f} ms "
          f"= {args.report_every * PAPER_STEP_S:.2f} s; server's database pool: "
          + (f"{args.pool} connections" if args.pool else "MLflow's default (5 + 10)"),
          flush=True)
    server, driver = [], []
    root = Path(tempfile.mkdtemp(prefix="slotsweep-tracking-"))
    started = time.perf_counter()
    try:
        for backend in args.backends:
            rows = measure(backend, args, root, params)
            server += rows[0]
            driver += rows[1]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print_tables(server, driver)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    failed = sum(r["failed"] for r in server)
    if failed:
        print(f"{failed} log_batch calls failed: the server refused them (their points are "
              "not counted as logged; the first errors are on stderr)")
    lost = sum(r["lost"] for r in server + driver)
    if lost:
        sys.exit(f"{lost} metric points were lost")


if __name__ == "__main__":
    main()
