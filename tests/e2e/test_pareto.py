"""Multi-objective sweeps end to end: real Ray, Optuna, MLflow (sqlite) and Chromium.

Every check recomputes the front (and its hypervolume) on its own from the values MLflow
holds, with the definition written out here and with Optuna's own routines, and holds
the run's summary, the MLflow tags and the report to it.
"""

from __future__ import annotations

import math
import os
import pickle
import random
import re
import time

import numpy as np
import optuna
import pytest

from tests.support.browser import chromium
from tests.support.reports import make_report
from tests.support.sweeps import (
    check_consistent,
    instance_dir,
    ledger,
    mlflow_runs,
    params_sequence,
    reported_steps,
    run,
    run_and_kill,
    sweep_file,
)

pytestmark = pytest.mark.slow

THREE = {"val/fg_ari": "max", "val/mbo": "max", "val/stripe": "min"}
# Tiny models do not beat the trivial baselines on every objective (their hypervolume
# against blocks 2x2 is 0): a fixed reference point makes the hypervolume say something.
REFERENCE = {"val/fg_ari": -1.0, "val/mbo": 0.0, "val/stripe": 1.0}
TRIALS = 4


def pareto_file(root, data):
    # Two random startup trials: the last two are chosen by multi-objective TPE from the
    # results before them, so a resume that lost the searcher's state would show.
    return sweep_file(root, data, search={
        "objectives": THREE, "sampler": "tpe", "startup_trials": 2, "num_samples": TRIALS,
        "max_concurrent": 1, "seed": 2, "reference_point": REFERENCE})


def objectives(storage) -> dict[str, dict[str, float]]:
    """trial id -> its objectives' last values in MLflow, for the trials that ended."""
    _, _, trials = mlflow_runs(storage)
    return {r.data.tags["slotsweep.trial_id"]: {m: r.data.metrics[m] for m in THREE}
            for r in trials if r.data.tags.get("slotsweep.outcome") in ("finished",
                                                                         "stopped early")}


def non_dominated(points: dict[str, dict[str, float]]) -> set[str]:
    """The front by its definition, written out again (not slotsweep's function)."""
    def at_least(a, b):
        return all(a[m] >= b[m] if d == "max" else a[m] <= b[m] for m, d in THREE.items())

    return {k for k, v in points.items()
            if not any(at_least(w, v) and w != v for w in points.values())}


def optuna_hypervolume(points: list[dict[str, float]]) -> float:
    """Optuna's exact hypervolume of the points that beat REFERENCE everywhere."""
    sign = np.array([-1.0 if d == "max" else 1.0 for d in THREE.values()])
    ref = np.array([REFERENCE[m] for m in THREE]) * sign
    losses = np.array([[p[m] for m in THREE] for p in points]) * sign
    inside = losses[(losses < ref).all(axis=1)]
    return float(optuna._hypervolume.compute_hypervolume(inside, ref)) if len(inside) else 0.0


def printed_front(stdout: str) -> dict[str, list[str]]:
    """The summary's front table: trial id -> its printed objective values."""
    block = stdout.split("Pareto front over", 1)[1].split("\nhypervolume", 1)[0]
    rows = [line.split("|")[1:-1] for line in block.splitlines()[3:] if line.startswith("|")]
    return {cells[0].strip(): [c.strip() for c in cells[1:1 + len(THREE)]] for cells in rows}


def front_by_params(storage) -> dict[tuple, dict[str, float]]:
    """The front as settings -> objectives (trial ids differ between two sweeps)."""
    values = objectives(storage)
    by_id = {e["trial_id"]: tuple(sorted(e["params"].items())) for e in ledger(storage)}
    return {by_id[k]: values[k] for k in non_dominated(values)}


@pytest.fixture(scope="module")
def pareto(tmp_path_factory, dsprites16):
    """A finished 4-trial sweep over FG-ARI, mBO and the stripe score, uninterrupted."""
    root = tmp_path_factory.mktemp("pareto")
    path = pareto_file(root, dsprites16)
    done = run(path)
    assert done.returncode == 0, done.stderr[-3000:]
    return root, path, root / "storage", done.stdout


def test_the_front_is_the_non_dominated_set_of_what_mlflow_holds(pareto):
    root, path, storage, stdout = pareto
    check_consistent(storage, TRIALS)
    values = objectives(storage)
    assert len(values) == TRIALS
    front = non_dominated(values)
    assert front

    _, _, trials = mlflow_runs(storage)  # every trial run is tagged, and the tags agree
    tags = {r.data.tags["slotsweep.trial_id"]: r.data.tags["slotsweep.pareto_front"]
            for r in trials}
    assert tags == {k: "true" if k in front else "false" for k in values}

    printed = printed_front(stdout)  # the summary's table: the same trials and values
    assert set(printed) == front, stdout
    for k, cells in printed.items():
        assert cells == [f"{values[k][m]:.3f}" for m in THREE], (k, cells)
    volume = float(re.search(r"\nhypervolume (\S+) against the sweep file's reference",
                             stdout).group(1))
    assert volume == pytest.approx(optuna_hypervolume([values[k] for k in front]), rel=1e-3)

    # Optuna was told every trial's three values: its own front holds the same values.
    state = sorted(instance_dir(storage).glob("tune-000/searcher-state-*.pkl"))[-1]
    with state.open("rb") as f:  # our own pickle, trusted
        study = pickle.load(f)["_ot_study"]
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MAXIMIZE", "MINIMIZE"]
    told = sorted(v for t in study.best_trials for v in [tuple(t.values)])
    ours = sorted(tuple(values[k][m] for m in THREE) for k in front)
    assert len(told) == len(ours)
    for a, b in zip(told, ours, strict=True):
        assert a == pytest.approx(b)


def test_killed_at_random_moments_it_resumes_to_the_same_sequence_and_front(
        tmp_path, dsprites16, pareto):
    _, _, reference, _ = pareto
    seed = int(os.environ.get("SLOTSWEEP_KILL_SEED", time.time_ns() % 2**31))
    rng = random.Random(seed)
    path = pareto_file(tmp_path, dsprites16)
    storage = tmp_path / "storage"
    total = reported_steps(reference)  # the reports an uninterrupted sweep makes
    moments = sorted(rng.sample(range(1, total), 2))
    kills = [run_and_kill(path, lambda at=at: reported_steps(storage) >= at)
             for at in moments]
    done = run(path)
    assert done.returncode == 0, (seed, moments, done.stderr[-3000:])
    assert any(kills), f"seed {seed}: the driver finished before both kills {moments}"
    check_consistent(storage, TRIALS)
    assert params_sequence(storage) == params_sequence(reference), (seed, moments)
    resumed, straight = front_by_params(storage), front_by_params(reference)
    assert resumed.keys() == straight.keys(), (seed, moments)
    for key, values in straight.items():
        assert resumed[key] == pytest.approx(values, rel=1e-6), (seed, moments, key)
    _, _, trials = mlflow_runs(storage)
    on = {r.data.tags["slotsweep.trial_id"] for r in trials
          if r.data.tags["slotsweep.pareto_front"] == "true"}
    assert on == non_dominated(objectives(storage)), (seed, moments)


def test_report_shows_the_front_its_masks_and_hypervolume(pareto):
    root, path, storage, _ = pareto
    proc, html = make_report(root, path, "--markdown", str(root / "report.md"))
    assert proc.returncode == 0, proc.stderr
    values = objectives(storage)
    front = non_dominated(values)
    expected = optuna_hypervolume([values[k] for k in front])
    assert f"Hypervolume {expected:.4g} against the sweep file's reference point" in (
        root / "report.md").read_text()

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with chromium() as browser:
        browser.set_window_size(1400, 2600)
        browser.get((root / "report.html").as_uri())
        WebDriverWait(browser, 60).until(lambda b: b.find_elements(
            By.CSS_SELECTOR, "#fig-front svg.main-svg"))
        traces = browser.execute_script(
            "return document.getElementById('fig-front').data.map("
            "t => ({name: t.name, ids: t.customdata || [], text: t.text, x: t.x, y: t.y}))")
        by_name = {t["name"]: t for t in traces}
        ringed = by_name["Pareto front"]
        assert set(ringed["ids"]) == front
        for k, x, y in zip(ringed["ids"], ringed["x"], ringed["y"], strict=True):
            assert (x, y) == pytest.approx((values[k]["val/fg_ari"], values[k]["val/mbo"]))
        assert set(by_name["trials"]["ids"]) == set(values)
        assert "blocks 2x2" in by_name["trivial baselines"]["text"]  # baselines as points

        links = browser.find_elements(By.CSS_SELECTOR, "#front-trials a")
        assert {a.text for a in links} == front
        for a in links:  # each front trial links to its own masks, which are drawn
            target = a.get_attribute("href").rsplit("#", 1)[1]
            figure = browser.find_element(By.ID, target)
            assert figure.get_attribute("data-trial") == a.text
            image = figure.find_element(By.CSS_SELECTOR, "img.front-masks")
            assert browser.execute_script(
                "return arguments[0].complete && arguments[0].naturalWidth", image) > 0
        pick = sorted(front)[0]  # a click on a ringed point leads to its masks
        browser.execute_script(
            "document.getElementById('fig-front').emit('plotly_click', "
            "{points: [{customdata: arguments[0]}]})", pick)
        assert browser.execute_script("return location.hash") == f"#front-{pick}"

        shown = browser.find_element(By.ID, "hypervolume")
        assert float(shown.get_attribute("data-value")) == pytest.approx(expected, rel=1e-9)
        assert math.isfinite(expected) and expected > 0
        assert f"{expected:.4g}" in shown.text
