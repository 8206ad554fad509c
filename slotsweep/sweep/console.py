"""What `slotsweep run` prints: the dry run, the summary of a sweep's trials beside the
trivial baselines, and the one-paragraph notes for a busy machine and a storage fault."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from slotsweep.sweep.driver import SweepResult
    from slotsweep.sweep.spec import Sweep


def first_params(sweep: Sweep) -> dict[str, Any]:
    """The parameters of a first trial: every key's first value for a grid search,
    otherwise the first draw of a seeded Optuna TPE study over the same space."""
    if sweep.spec.search.algorithm == "grid":
        return {k: sweep.spec.search_space[k].candidates()[0] for k in sweep.order()}
    import optuna

    from slotsweep.sweep.space import OptunaSpace, sampler, study_directions

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=sampler(sweep, sweep.spec.search.seed),
                                directions=study_directions(sweep))
    return OptunaSpace(sweep)(study.ask())


def dry_run(sweep: Sweep) -> str:
    """The search space and the resolved config of the first trial the search would run."""
    lines = [f"sweep {sweep.name} ({sweep.path})", "search space:"]
    for key in sweep.order():
        p = sweep.spec.search_space[key]
        when = f"  when {p.when}" if p.when else ""
        lines.append(f"  {key}: {p.kind} {getattr(p, p.kind)}{when}")
    s = sweep.spec.search
    goal = ", ".join(f"{mode} {metric}" for metric, mode in s.directions().items())
    algorithm = f"{s.algorithm} ({s.sampler})" if s.multi_objective else s.algorithm
    stop_on = sweep.spec.stop_on()
    stops = f"asha on {stop_on[0]}" if stop_on and s.multi_objective else (
        sweep.spec.scheduler.type)
    lines.append(f"search: {algorithm}, {sweep.num_trials()} trials, {goal}, "
                 f"seed {s.seed}; scheduler: {stops}; "
                 f"resources per trial: {sweep.spec.resources.cpu:g} CPU, "
                 f"{sweep.spec.resources.gpu:g} GPU")
    params = first_params(sweep)
    lines += ["first trial:", *(f"  {k} = {v}" for k, v in params.items()),
              "resolved config of the first trial:", sweep.trial_config(params).to_yaml()]
    return "\n".join(lines)


def unfinished_trials(result: SweepResult) -> int:
    """Trials this run aimed for (`--num-samples`, else the sweep file's count) that have
    not ended: an interrupted sweep, where Tune stopped on Ctrl-C and returned what it
    had, with the rest pending or running."""
    from slotsweep.sweep.driver import UNFINISHED

    ended = sum(t.outcome not in UNFINISHED for t in result.trials)  # as run_sweep ends them
    return max(result.planned, len(result.trials)) - ended


def summary(sweep: Sweep, result: SweepResult, started: str) -> str:
    """Trials, the best one, the trivial baselines, and where to look in MLflow."""
    from slotsweep.metrics.baselines import against_baselines, on_validation_set

    metric, mode = sweep.spec.search.metric, sweep.spec.search.mode
    rows = sorted(result.trials, key=lambda t: -_val(t, metric) if mode == "max"
                  else _val(t, metric))
    keys = sweep.order()
    lines = ["", f"sweep {sweep.name}: {len(rows)} trials in {result.instance_dir}",
             "| trial | " + " | ".join(k.split(".")[-1] for k in keys) +
             " | FG-ARI | mBO | stripe | step | outcome |",
             "|---" * (len(keys) + 6) + "|"]
    from slotsweep.sweep.space import active_params

    for t in rows:
        active = active_params(sweep, t.params)
        vals = " | ".join(_fmt(active.get(k)) for k in keys)  # "-": key inactive here
        lines.append(f"| {t.trial_id} | {vals} | {_fmt(t.metrics.get('val/fg_ari'))} | "
                     f"{_fmt(t.metrics.get('val/mbo'))} | {_fmt(t.metrics.get('val/stripe'))} | "
                     f"{t.metrics.get('step', '-')} | "
                     f"{t.outcome}{': ' + t.error if t.error else ''} |")
    found = on_validation_set(sweep.trial_config({}))
    baselines = found.scores if found is not None else {}
    lines += ["", "trivial baselines on the same validation images:" if baselines else
              "no trivial baselines: the validation split has no label maps"]
    for name, s in baselines.items():
        lines.append(f"  {name:<12} FG-ARI {s['fg_ari']:.3f}  mBO {s['mbo']:.3f}  "
                     f"stripe {_fmt(s.get('stripe'))}")
    if sweep.spec.search.multi_objective:
        lines += front_lines(sweep, result, baselines)
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
        # Several objectives: the front above is the answer; this is the first one's best.
        which = f" on {_label(metric)}" if sweep.spec.search.multi_objective else ""
        lines += ["", f"best trial{so_far}{which} {best.trial_id}: "
                  f"FG-ARI {_fmt(best.metrics.get('val/fg_ari'))}"
                  f", mBO {_fmt(best.metrics.get('val/mbo'))}  ({_fmt_params(sweep, best)})",
                  *(["  " + against_baselines(best.metrics, baselines)] if baselines else [])]
    lines += [
        "", "open it in MLflow:",
        f"  mlflow ui --backend-store-uri {result.tracking_uri} --host 127.0.0.1 --port 5000",
        f"  http://127.0.0.1:5000/#/experiments/{result.experiment_id}"
        f"/runs/{result.parent_run_id}",
        f"(Ray: {started})",
    ]
    return "\n".join(lines)


LABELS = {"val/fg_ari": "FG-ARI", "val/mbo": "mBO", "val/stripe": "stripe"}


def _label(metric: str) -> str:
    return LABELS.get(metric, metric)


def front_lines(sweep: Sweep, result: SweepResult,
                baselines: dict[str, dict[str, float]]) -> list[str]:
    """The Pareto front of a multi-objective sweep (its trials, their objectives and
    parameters, best on the first objective first) and its hypervolume against the best
    trivial baseline (`baselines` as `on_validation_set` scores them)."""
    from slotsweep.metrics.pareto import hypervolume, reference_point

    directions = sweep.spec.search.directions()
    front = result.front(directions)
    keys = sweep.order()
    so_far = " so far" if unfinished_trials(result) else ""
    lines = ["", f"Pareto front{so_far} over " +
             ", ".join(f"{_label(m)} ({d})" for m, d in directions.items()) +
             f": {len(front)} of {len(result.trials)} trials",
             "| trial | " + " | ".join(_label(m) for m in directions) + " | " +
             " | ".join(k.split(".")[-1] for k in keys) + " | outcome |",
             "|---" * (len(directions) + len(keys) + 2) + "|"]
    from slotsweep.sweep.space import active_params

    for t in front:
        active = active_params(sweep, t.params)
        lines.append(f"| {t.trial_id} | " +
                     " | ".join(_fmt(t.metrics.get(m)) for m in directions) + " | " +
                     " | ".join(_fmt(active.get(k)) for k in keys) + f" | {t.outcome} |")
    references = {name: {f"val/{k}": v for k, v in s.items()} for name, s in baselines.items()}
    found = reference_point(references, directions, sweep.spec.search.reference_point)
    if found is None:
        lines.append("no hypervolume: the trivial baselines are not scored on every "
                     "objective" if baselines else "no hypervolume: no trivial baselines")
        return lines
    name, ref = found
    volume = hypervolume([t.metrics for t in front], ref, directions)
    point = ", ".join(f"{_label(m)} {_fmt(ref[m])}" for m in directions)
    lines.append(f"hypervolume {volume:.4g} against {name} ({point})" +
                 ("" if volume else ": no trial beats it on every objective"))
    return lines


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
    from slotsweep.sweep.space import active_params

    return ", ".join(f"{k}={_fmt(v)}" for k, v in active_params(sweep, t.params).items())


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


def storage_message(exc: BaseException) -> str | None:
    """One paragraph for a full / read-only storage (Tune may wrap our StorageFault)."""
    from slotsweep.sweep.storage import StorageFault, cause_chain, storage_fault

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
