"""Run a named sweep: `python -m slotsweep.run NAME` (or `slotsweep run NAME`).

    python -m slotsweep.run quickstart                 # CPU, synthetic data, minutes
    python -m slotsweep.run coco_beta_sweep            # on a Ray GPU cluster
    python -m slotsweep.run coco_beta_sweep            # again after an interruption: resumes
    python -m slotsweep.run quickstart --num-samples 12  # extend a finished sweep
    python -m slotsweep.run quickstart --dry-run       # validate and show, start nothing
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slotsweep.cli import add_common_options, add_sweep_storage_options, positive_int, setup_logging
from slotsweep.shipped import known_sweeps

if TYPE_CHECKING:
    from slotsweep.sweep_spec import Sweep

# Nothing above imports pydantic, torch, Ray or MLflow, so `--help` and a usage error
# answer at once; main() imports what the command needs.
log = logging.getLogger("slotsweep.run")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m slotsweep.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep", nargs="?", help="a name in sweeps/ or a path to a YAML; the "
                                            "names: " + ", ".join(known_sweeps()))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override the base trial config, e.g. --set train.steps=200")
    p.add_argument("--num-samples", type=positive_int, help="total trials (raise it to extend)")
    add_sweep_storage_options(p)
    p.add_argument("--address", help="Ray: auto | local | ray://host:port | host:port "
                                     "(default: $RAY_ADDRESS, else the cluster `ray start` began "
                                     "here, else a new local instance; another sweep's "
                                     "local instance is never joined)")
    p.add_argument("--num-cpus", type=positive_int, help="CPUs of a local Ray instance")
    p.add_argument("--cpus-per-trial", type=float, metavar="N",
                   help="override the sweep file's resources.cpu")
    p.add_argument("--gpus-per-trial", type=float, metavar="N",
                   help="override the sweep file's resources.gpu (0: run a GPU sweep on "
                        "CPUs, with --set train.device=cpu)")
    p.add_argument("--fresh", action="store_true",
                   help="start a new instance of the sweep (the old one is kept)")
    p.add_argument("--dry-run", action="store_true",
                   help="validate, print the space and the first trial's config; start nothing")
    add_common_options(p)  # -q also hides Tune's progress table
    return p


def first_params(sweep: Sweep) -> dict[str, Any]:
    """The parameters of a first trial: every key's first value for a grid search,
    otherwise the first draw of a seeded Optuna TPE study over the same space."""
    if sweep.spec.search.algorithm == "grid":
        return {k: sweep.spec.search_space[k].candidates()[0] for k in sweep.order()}
    import optuna

    from slotsweep.sweep import OptunaSpace

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=sweep.spec.search.seed))
    return OptunaSpace(sweep)(study.ask())


def with_resources(sweep: Sweep, cpu: float | None, gpu: float | None) -> Sweep:
    """The sweep with its per-trial resources replaced (None keeps the file's value)."""
    from pydantic import ValidationError

    from slotsweep.config import ConfigError, format_validation_error
    from slotsweep.sweep_spec import Resources

    res = sweep.spec.resources
    try:
        resources = Resources(cpu=res.cpu if cpu is None else cpu,
                              gpu=res.gpu if gpu is None else gpu)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(
            exc, "--cpus-per-trial/--gpus-per-trial", Resources)) from None
    sweep.spec = sweep.spec.model_copy(update={"resources": resources})
    return sweep


def dry_run(sweep: Sweep) -> str:
    """The search space and the resolved config of the first trial the search would run."""
    lines = [f"sweep {sweep.name} ({sweep.path})", "search space:"]
    for key in sweep.order():
        p = sweep.spec.search_space[key]
        when = f"  when {p.when}" if p.when else ""
        lines.append(f"  {key}: {p.kind} {getattr(p, p.kind)}{when}")
    s = sweep.spec.search
    lines.append(f"search: {s.algorithm}, {sweep.num_trials()} trials, {s.mode} {s.metric}, "
                 f"seed {s.seed}; scheduler: {sweep.spec.scheduler.type}; "
                 f"resources per trial: {sweep.spec.resources.cpu:g} CPU, "
                 f"{sweep.spec.resources.gpu:g} GPU")
    params = first_params(sweep)
    lines += ["first trial:", *(f"  {k} = {v}" for k, v in params.items()),
              "resolved config of the first trial:", sweep.trial_config(params).to_yaml()]
    return "\n".join(lines)


def unfinished_trials(result) -> int:
    """Trials this run aimed for (`--num-samples`, else the sweep file's count) that have
    not ended: an interrupted sweep, where Tune stopped on Ctrl-C and returned what it
    had, with the rest pending or running."""
    from slotsweep.sweep import UNFINISHED

    ended = sum(t.outcome not in UNFINISHED for t in result.trials)  # as run_sweep ends them
    return max(result.planned, len(result.trials)) - ended


def summary(sweep: Sweep, result, started: str) -> str:
    """Trials, the best one, the trivial baselines, and where to look in MLflow."""
    import torch

    from slotsweep.baselines import against_baselines, trivial_baselines
    from slotsweep.batches import Batches

    metric, mode = sweep.spec.search.metric, sweep.spec.search.mode
    rows = sorted(result.trials, key=lambda t: -_val(t, metric) if mode == "max"
                  else _val(t, metric))
    keys = sweep.order()
    lines = ["", f"sweep {sweep.name}: {len(rows)} trials in {result.instance_dir}",
             "| trial | " + " | ".join(k.split(".")[-1] for k in keys) +
             " | FG-ARI | mBO | stripe | step | outcome |",
             "|---" * (len(keys) + 6) + "|"]
    from slotsweep.sweep import active_params

    for t in rows:
        active = active_params(sweep, t.params)
        vals = " | ".join(_fmt(active.get(k)) for k in keys)  # "-": key inactive here
        lines.append(f"| {t.trial_id} | {vals} | {_fmt(t.metrics.get('val/fg_ari'))} | "
                     f"{_fmt(t.metrics.get('val/mbo'))} | {_fmt(t.metrics.get('val/stripe'))} | "
                     f"{t.metrics.get('step', '-')} | "
                     f"{t.outcome}{': ' + t.error if t.error else ''} |")
    base = sweep.trial_config({})
    val = Batches.open(base.data.val, base.model, eval=True)
    seg = torch.cat([b["segmentation"].long() for b in
                     val.eval_batches(base.eval.batch_size, base.eval.max_images)])
    baselines = trivial_baselines(seg)
    lines += ["", "trivial baselines on the same validation images:"]
    for name, s in baselines.items():
        lines.append(f"  {name:<12} FG-ARI {s['fg_ari']:.3f}  mBO {s['mbo']:.3f}")
    failed = [t for t in rows if t.outcome == "failed"]
    if failed:
        lines.append(f"\n{len(failed)} trial(s) failed: " +
                     "; ".join(f"{t.trial_id}: {t.error}" for t in failed))
    unfinished = unfinished_trials(result)
    if unfinished:
        lines.append(f"\n{unfinished} of {max(result.planned, len(rows))} trials not "
                     "finished: rerun the same command to resume (finished trials are kept, "
                     "started ones go on from their last checkpoint)")
    best = result.best(metric, mode)
    if best is not None:
        so_far = " so far" if unfinished else ""
        lines += ["", f"best trial{so_far} {best.trial_id}: "
                  f"FG-ARI {_fmt(best.metrics.get('val/fg_ari'))}"
                  f", mBO {_fmt(best.metrics.get('val/mbo'))}  ({_fmt_params(sweep, best)})",
                  "  " + against_baselines(best.metrics, baselines)]
    lines += [
        "", "open it in MLflow:",
        f"  mlflow ui --backend-store-uri {result.tracking_uri} --host 127.0.0.1 --port 5000",
        f"  http://127.0.0.1:5000/#/experiments/{result.experiment_id}"
        f"/runs/{result.parent_run_id}",
        f"(Ray: {started})",
    ]
    return "\n".join(lines)


def _val(t, metric: str) -> float:
    v = t.metrics.get(metric, math.nan)
    return v if isinstance(v, (int, float)) and math.isfinite(v) else -math.inf


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) >= 0.01 or v == 0 else f"{v:.2e}"
    return str(v)


def _fmt_params(sweep, t) -> str:
    from slotsweep.sweep import active_params

    return ", ".join(f"{k}={_fmt(v)}" for k, v in active_params(sweep, t.params).items())


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.sweep is None:
        p.error("name a sweep: " + ", ".join(known_sweeps()) + " (or a path to a YAML)")
    setup_logging(args.verbose - args.quiet)
    from slotsweep.config import ConfigError, parse_override
    from slotsweep.data.shards import ShardError  # imports torch
    from slotsweep.sweep_spec import load_sweep

    try:
        overrides = dict(parse_override(o) for o in args.overrides)
        sweep = load_sweep(args.sweep, overrides)
        if args.cpus_per_trial is not None or args.gpus_per_trial is not None:
            sweep = with_resources(sweep, args.cpus_per_trial, args.gpus_per_trial)
        if args.dry_run:
            print(dry_run(sweep))
            return 0
        from slotsweep import sweep as engine

        engine.check_data(sweep.trial_config({}))  # before Ray starts or storage is touched
        from slotsweep.tracking import check_tracking_server

        check_tracking_server(args.tracking_uri or sweep.spec.tracking.uri or "")
        engine.check_storage(Path(args.storage or sweep.spec.storage).resolve() / sweep.name)
        load = os.getloadavg()[0]  # other processes' work, before Ray adds its own
        try:
            started = engine.connect(args.address, num_cpus=args.num_cpus)
        except ConnectionError as exc:
            print(f"error: cannot connect to Ray at {args.address or 'auto'}: "
                  f"{str(exc).strip().splitlines()[0]}; if the cluster uses token "
                  "authentication, export RAY_AUTH_MODE=token", file=sys.stderr)
            return 2
        engine.check_resources(sweep, started_locally=started == "local")
        note = busy_machine_note(load, os.cpu_count() or 1, os.environ)
        if started == "local" and note:
            log.warning(note)
        result = engine.run_sweep(sweep, num_samples=args.num_samples, storage=args.storage,
                                  tracking_uri=args.tracking_uri, fresh=args.fresh,
                                  verbose=0 if args.quiet else min(3, 1 + args.verbose))
        _disconnect_ray()  # the summary is the last thing printed, after any worker line
        print(summary(sweep, result, started))
        if unfinished_trials(result):
            return 130  # interrupted (Ctrl-C reaches Tune, which stops and returns)
    except (ConfigError, ShardError) as exc:
        _disconnect_ray()
        print(f"error: {exc}", file=sys.stderr)
        return 2

    except KeyboardInterrupt:
        _disconnect_ray()
        print("\ninterrupted: rerun the same command to resume the sweep", file=sys.stderr)
        return 130
    except Exception as exc:
        message = _storage_message(exc)
        if message is None:
            raise
        _disconnect_ray()
        print(f"error: {message}", file=sys.stderr)
        return 3
    return 0


def busy_machine_note(load: float, cpus: int, env) -> str | None:
    """A line for a sweep that starts its own Ray instance where other processes keep
    half the cores or more busy (1-minute load average): Ray starts trial workers at
    niceness 15, so they get only the CPU those processes leave. BENCHMARKS.md measured
    428 s instead of 32 s at niceness 0 (14.3 s on the idle machine)."""
    if "RAY_worker_niceness" in env or load < max(1.0, cpus / 2):
        return None
    return (f"other processes keep this machine busy (load {load:.1f} on {cpus} CPUs): "
            "Ray runs trials at niceness 15, so unless those processes are nicer still, "
            "trials get only the CPU they leave; "
            "RAY_worker_niceness=0 in the environment gives them an equal share "
            "(README, 'On a busy machine')")


def _disconnect_ray() -> None:
    """Stop Ray's forwarding of worker output, so that the summary or the error is the
    last thing printed (a worker's late log line would otherwise land after it)."""
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    sys.stdout.flush()


def _storage_message(exc: BaseException) -> str | None:
    """One paragraph for a full / read-only storage (Tune may wrap our StorageFault)."""
    from slotsweep.sweep import StorageFault, cause_chain, storage_fault

    fault = next((e for e in cause_chain(exc) if isinstance(e, StorageFault)), None)
    if fault is not None:
        first = str(fault)
    elif (sign := storage_fault(exc)) is not None:
        first = f"the sweep storage {sign}"
    else:
        return None
    return (f"{first}. The sweep stopped; finished trials, checkpoints and the sweep state "
            "written before the fault are kept. Free some space (or make the storage "
            "writable) and rerun the same command to resume.")


if __name__ == "__main__":
    sys.exit(main())

