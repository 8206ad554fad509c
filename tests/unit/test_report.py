"""The sweep dashboard (slotsweep.report) and the MLflow UI, checked in a real browser:
a real small sweep, the real report CLI, headless Chromium, a real `mlflow server`."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from slotsweep.reporting.figures import param_figures
from slotsweep.reporting.seeds import mean_ci, seeds_for_power
from slotsweep.reporting.trials import TrialView
from tests.support.reports import make_report
from tests.support.sweeps import sweep_file


def test_report_without_a_store_names_the_sweep_and_the_path(tmp_path, dsprites16):
    path = sweep_file(tmp_path, dsprites16)
    proc, html = make_report(tmp_path, path)
    assert proc.returncode == 2
    assert "tiny" in proc.stderr and "mlflow.db" in proc.stderr and "run the sweep" in proc.stderr
    assert html == ""
    from tests.support.browser import free_port

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    proc, html = make_report(tmp_path, path, "--tracking-uri", url)
    assert proc.returncode == 2 and html == "" and "Traceback" not in proc.stderr
    assert f"error: cannot reach the MLflow tracking server at {url}" in proc.stderr


def _trial(trial_id: str, loss: str, beta: float, fg: float) -> TrialView:
    return TrialView(trial_id, trial_id, trial_id, "finished", None,
                     {"loss.type": loss, "loss.beta": beta, "loss.proj_depth": 2,
                      "model.slot_size": 16},
                     {"val/fg_ari": fg, "val/mbo": 0.1, "val/stripe": 0.5})


def test_settings_that_do_not_act_are_levels_not_points():
    trials = [_trial("a", "none", 1.0, 0.2), _trial("b", "none", 1.0, 0.4),
              _trial("c", "covloss", 0.1, 0.5), _trial("d", "cosine", 0.01, 0.3)]
    figures = {f["id"]: f["spec"] for f in param_figures(
        trials, ["loss.type", "loss.beta"], ["loss.beta", "loss.proj_depth"], {})}
    beta = figures["fig-fg_ari-loss-beta"]
    assert sorted(x for trace in beta["data"] for x in trace["x"]) == [0.01, 0.1]
    levels = [s for s in beta["layout"]["shapes"] if s.get("type") == "line"]
    assert [s["y0"] for s in levels] == [pytest.approx(0.3)]  # mean of the two `none` trials
    depth = figures["fig-fg_ari-loss-proj_depth"]  # the cosine loss has no head
    assert [t["customdata"] for t in depth["data"]] == [["c"]]


def test_mean_ci_is_students_t_interval():
    from scipy import stats

    values = [0.61, 0.55, 0.70, 0.58]
    mean, half = mean_ci(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values),
                                 scale=stats.sem(values))
    assert mean == pytest.approx(np.mean(values))
    assert (mean - half, mean + half) == pytest.approx((low, high))
    assert mean_ci([0.3]) == (0.3, None)


def test_seed_groups_and_loss_type_tests():
    from slotsweep.reporting.seeds import loss_type_tests, seed_groups

    def trial(i, loss, beta, seed, fg):
        t = _trial(f"t{i}", loss, beta, fg)
        t.config["seed"] = seed
        return t

    rng = np.random.default_rng(0)
    trials = [trial(i, "covloss", 1.0, s, 0.8 + 0.01 * rng.standard_normal())
              for i, s in enumerate(range(4))]
    trials += [trial(10 + i, "cosine", 0.01, s, 0.4 + 0.01 * rng.standard_normal())
               for i, s in enumerate(range(4))]
    trials += [trial(20 + i, "none", 1.0, s, 0.4 + 0.01 * rng.standard_normal())
               for i, s in enumerate(range(4))]
    groups = seed_groups(trials, ["loss.type", "loss.beta", "seed"], ["val/fg_ari"])
    assert sorted((g["loss"], g["n"]) for g in groups) == [("cosine", 4), ("covloss", 4),
                                                            ("none", 4)]
    tests = {(t["a"].split()[0], t["b"].split()[0]): t["p"]
             for t in loss_type_tests(groups, "val/fg_ari", "max")}
    assert tests[("cosine", "covloss")] < 1e-4  # 0.4 vs 0.8: clearly different
    assert tests[("cosine", "none")] > 0.05  # the same distribution


def test_seed_statistics_count_finished_trials_only():
    """A half-done seeded sweep: running and failed seeds are counted beside the finished
    ones, never averaged into them (they stand at another step, or at none)."""
    from slotsweep.reporting.markdown import markdown
    from slotsweep.reporting.seeds import seed_groups, seeds_label

    def trial(i, seed, fg, status="finished"):
        t = _trial(f"t{i}", "none", 1.0, fg)
        t.config["seed"] = seed
        t.status = status
        return t

    trials = [trial(0, 0, 0.50), trial(1, 1, 0.60), trial(2, 2, 0.05, "running"),
              trial(3, 3, 0.99, "failed"), trial(4, 0, 0.30, "running")]
    trials[4].config["loss.type"] = "cosine"
    groups = {g["loss"]: g for g in seed_groups(trials, ["loss.type", "seed"], ["val/fg_ari"])}
    none, cosine = groups["none"], groups["cosine"]
    assert none["n"] == 2 and none["size"] == 4
    assert none["values"]["val/fg_ari"] == [0.50, 0.60]
    assert none["mean"]["val/fg_ari"] == pytest.approx(0.55)
    assert seeds_label(none) == "2 (+1 failed, +1 running)"
    assert cosine["n"] == 0 and cosine["mean"] == {} and seeds_label(cosine) == "0 (+1 running)"

    context = {"sweep": "s", "instance": "run-001", "counts": {"running": 2},
               "seed_metrics": {"val/fg_ari": "FG-ARI"}, "tests": [], "baselines": {},
               "seed_groups": [{"setting": g["setting"], "loss": g["loss"],
                                "seeds": seeds_label(g), "cells": {"val/fg_ari": (
                                    g["mean"].get("val/fg_ari"), g["ci"].get("val/fg_ari"))}}
                               for g in (none, cosine)]}
    text = markdown(context)
    assert "| loss.type=none | none | 2 (+1 failed, +1 running) | 0.550 ± " in text
    assert "| loss.type=cosine | cosine | 0 (+1 running) | – |" in text


def test_progress_counts_steps_trained_and_the_most_left_to_train():
    """Running and interrupted trials owe the rest of their steps, pending ones all of
    them; finished, early-stopped and failed trials owe nothing."""
    from slotsweep.reporting.markdown import markdown
    from slotsweep.reporting.trials import step_progress

    trials = []
    for i, (status, step) in enumerate([("finished", 40), ("stopped early", 10),
                                        ("failed", 5), ("running", 25),
                                        ("interrupted", 30)]):
        t = _trial(f"t{i}", "none", 1.0, 0.5)
        t.status, t.metrics["step"] = status, step
        t.config["train.steps"] = 40
        trials.append(t)
    trials[3].config["train.steps"] = 60  # a searched step budget is the trial's own
    steps = step_progress(trials, pending=2, base_steps=40)
    to_go = (60 - 25) + (40 - 30) + 2 * 40
    assert steps == {"trained": 40 + 10 + 5 + 25 + 30, "to_go": to_go,
                     "pace": None, "hours": None}  # no pace measured: no estimate
    trials[3].pace, trials[4].pace = 0.01, 99.0  # the interrupted one is not running
    steps = step_progress(trials, pending=2, base_steps=40)
    # One trial at a time: the running one's 35 steps, then the interrupted one's 10 and
    # the pending ones' 40 each, one after another at the same pace.
    assert steps["pace"] == 0.01 and steps["at_once"] == 1
    assert steps["hours"] == pytest.approx(to_go / 0.01 / 3600)

    empty = {"seed_groups": [], "columns": [], "rows": [], "metric": "val/fg_ari",
             "mode": "max", "tests": [], "baselines": {}}
    text = markdown({"sweep": "s", "instance": "run-002", "counts": {"running": 1},
                     "steps": {"trained": 80000, "to_go": 280000}, **empty})
    assert text.startswith("Sweep `s` (run-002): 1 running; 80,000 steps trained, "
                           "at most 280,000 to go.")
    timed = markdown({"sweep": "s", "instance": "run-002", "counts": {"running": 2},
                      "steps": {"trained": 80000, "to_go": 270000, "pace": 6.25,
                                "at_once": 2, "hours": 6.0}, **empty})
    assert "at most 270,000 to go (about 6.0 h, 2 at a time at 6.2 steps/s each)." in timed
    done = markdown({"sweep": "s", "instance": "run-002", "counts": {"finished": 9},
                     "steps": {"trained": 360000, "to_go": 0}, **empty})
    assert done.startswith("Sweep `s` (run-002): 9 finished.\n")


def test_time_to_go_runs_the_waiting_trials_as_slots_free_up():
    """Hours left follow the schedule: each running trial at its own pace, the waiting
    ones taking the first free place at the running trials' mean pace. A last trial that
    runs alone takes as long as it takes alone, not a share of the summed pace; a trial
    resumed too recently to have a pace of its own runs at the others'."""
    from slotsweep.reporting.trials import step_progress

    def trial(status, step, pace=None):
        t = _trial(f"t{step}{status}", "none", 1.0, 0.5)
        t.status, t.metrics["step"], t.pace = status, step, pace
        t.config["train.steps"] = 100
        return t

    # Two running at 1 step/s with 50 and 80 steps left; three trials wait. Places free at
    # 50 s and 80 s; waiting trials end at 150, 180, then 250 s (the last one alone).
    running = [trial("running", 50, 1.0), trial("running", 20, 1.0)]
    steps = step_progress([*running, trial("finished", 100)], pending=3, base_steps=100)
    assert steps["to_go"] == 50 + 80 + 300 and steps["at_once"] == 2
    assert steps["hours"] == pytest.approx(250 / 3600)
    assert steps["hours"] > steps["to_go"] / (2 * 1.0) / 3600  # the summed-pace estimate
    # Just resumed, no pace yet: it runs at the mean of the others' (here 2 steps/s).
    fresh = [trial("running", 0, 2.0), trial("running", 60)]
    steps = step_progress(fresh, pending=0, base_steps=100)
    assert steps["pace"] == 2.0 and steps["hours"] == pytest.approx(50 / 3600)
    # No running trial has a pace yet: no estimate.
    steps = step_progress([trial("running", 60)], pending=1, base_steps=100)
    assert steps["hours"] is None and steps["to_go"] == 140


def test_pace_is_wall_clock_steps_per_second_and_ignores_a_pause():
    """Pace comes from MLflow's timestamps of the evaluations (evaluation time included),
    as the median interval, so one long pause (interrupted, resumed a day later) does
    not make the estimate absurd."""
    from mlflow.entities import Metric

    from slotsweep.reporting.trials import wall_pace

    def history(*points):  # (step, seconds)
        return [Metric("val/fg_ari", 0.5, int(t * 1000), step) for step, t in points]

    assert wall_pace(history((1000, 0), (2000, 200), (3000, 400))) == pytest.approx(5.0)
    paused = history((1000, 0), (2000, 200), (3000, 86_400), (4000, 86_600), (5000, 86_800))
    assert wall_pace(paused) == pytest.approx(5.0)
    assert wall_pace(history((1000, 0))) is None  # one point: no interval
    # Right after a resume the only interval may be the pause itself: the run's resume
    # time (a tag the tracker sets) leaves it out, and with it nothing is left to judge.
    resumed = history((0, 0), (1000, 200), (2000, 9_000))
    assert wall_pace(resumed) < 3  # without it, the pause drags the median down
    assert wall_pace(resumed, resumed_at=8_700_000) == pytest.approx(5.0)
    assert wall_pace(history((1000, 0), (2000, 9_000)), resumed_at=8_700_000) is None
    # Only the last intervals count: a trial that sped up is judged on its recent pace.
    sped_up = history((0, 0), (1000, 1000), (2000, 1100), (3000, 1200), (4000, 1300),
                      (5000, 1400))
    assert wall_pace(sped_up, last=4) == pytest.approx(10.0)


def test_seeds_for_power_matches_a_simulation_of_welchs_test():
    """The number of seeds it takes to resolve a difference: at the returned n, Welch's
    test on simulated seeds finds the difference ~80% of the time; at n - 1, less."""
    from scipy import stats

    rng = np.random.default_rng(0)

    def simulated_power(n: int, diff: float, sd: float, reps: int = 20_000) -> float:
        x = rng.normal(0.0, sd, (reps, n))
        y = rng.normal(diff, sd, (reps, n))
        return float((stats.ttest_ind(x, y, axis=1, equal_var=False).pvalue < 0.05).mean())

    xs = ys = [0.0, 1.0]  # sample sd 0.707 on each side
    n = seeds_for_power(1.0, xs, ys)
    assert n == 9  # Cohen's d = 1.41
    assert simulated_power(n, 1.0, 0.5 ** 0.5) >= 0.78
    assert simulated_power(n - 1, 1.0, 0.5 ** 0.5) < 0.78
    assert seeds_for_power(-1.0, xs, ys) == n  # two-sided: the sign does not matter
    assert seeds_for_power(0.5, xs, ys) > n  # a smaller difference needs more seeds
    assert seeds_for_power(0.01, xs, ys) is None  # more than 100
    assert seeds_for_power(1.0, [0.5, 0.5], [0.2, 0.2]) is None  # no spread to judge by
    # A huge difference at unequal spreads: 2 seeds (power ~1). scipy's noncentral t gives
    # NaN for the wrong-sign tail here (df 1.55, nc 20); that NaN once made it say 3.
    xs, ys = [0.0, 2 ** 0.5], [0.0, 0.6 ** 0.5]  # variances 1.0 and 0.3
    assert seeds_for_power(20 * (1.3 / 2) ** 0.5, xs, ys) == 2


def test_png_without_a_browser_says_what_to_install(tmp_path, monkeypatch):
    from slotsweep.reporting.chromium import ChromiumError, screenshot

    page = tmp_path / "r.html"
    page.write_text("<html></html>")
    monkeypatch.setenv("SLOTSWEEP_CHROMIUM", str(tmp_path / "no-chromium"))
    with pytest.raises(ChromiumError, match="apt install chromium chromium-driver"):
        screenshot(page, tmp_path / "r.png")
    assert not (tmp_path / "r.png").exists()


def test_png_without_selenium_says_what_to_install(tmp_path):
    """Without the dev extra, --png names the extra instead of raising ImportError (a
    fresh interpreter in which importing selenium fails, as it does where it is absent)."""
    page = tmp_path / "r.html"
    page.write_text("<html></html>")
    code = ("import sys; sys.modules['selenium'] = None\n"
            "from pathlib import Path\n"
            "from slotsweep.reporting.chromium import ChromiumError, screenshot\n"
            "try:\n"
            f"    screenshot(Path({str(page)!r}), Path({str(tmp_path / 'r.png')!r}))\n"
            "except ChromiumError as exc:\n"
            "    print('refused:', exc)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "refused: this needs selenium: pip install -e '.[dev]'" in proc.stdout
    assert not (tmp_path / "r.png").exists()


def test_markdown_writes_tiny_loss_terms_in_e_notation():
    """A covariance term near 1e-10 (the paper's Sec. 4.3.1) must not read as 0.000."""
    from slotsweep.reporting.markdown import markdown

    text = markdown({"sweep": "s", "instance": "run-001", "counts": {"finished": 4},
                     "seed_metrics": {"val/fg_ari": "FG-ARI",
                                      "train/covariance": "covariance term"},
                     "seed_groups": [{"setting": "variant=covloss", "loss": "covloss",
                                      "seeds": "2", "cells": {
                                          "val/fg_ari": (0.5, 0.004),
                                          "train/covariance": (3.2e-10, 1.5e-10)}}],
                     "tests": [], "baselines": {}})
    # Scores and loss terms in separate tables, each row naming its setting.
    assert "| setting | loss | seeds | FG-ARI |\n" in text
    assert "| setting | loss | seeds | covariance term |\n" in text
    assert "| variant=covloss | covloss | 2 | 0.500 ± 0.004 |\n" in text
    assert "| variant=covloss | covloss | 2 | 3.20e-10 ± 1.50e-10 |\n" in text


def test_published_differences_are_set_next_to_this_sweeps():
    """Each difference between two variants in the published values is compared, by
    direction and Welch's test over finished seeds, with the same difference here."""
    from slotsweep.reporting.markdown import markdown
    from slotsweep.reporting.seeds import published_comparison, seed_groups
    from slotsweep.sweep.spec import Published

    rng = np.random.default_rng(1)
    level = {"a": 0.8, "b": 0.4, "c": 0.41, "d": 0.6}  # FG-ARI centre per variant
    trials = []
    for variant, centre in level.items():
        for seed in range(3):
            t = _trial(f"{variant}{seed}", "none", 1.0, centre + 0.01 * rng.standard_normal())
            t.config.update(variant=variant, seed=seed)
            t.metrics["probe/x_r2"] = 0.9
            trials.append(t)
    trials[-1].status = "running"  # d: 2 finished seeds
    trials[-2].status = "failed"  # d: 1 finished seed
    published = Published(source="Table 1", values={
        "a": {"val/fg_ari": 0.9, "probe/x_r2": 0.95},
        "b": {"val/fg_ari": 0.7, "probe/x_r2": 0.97},  # a > b there and here: agrees
        "c": {"val/fg_ari": 0.8},  # b < c there, b ≈ c here
        "d": {"val/fg_ari": 0.5}})
    groups = seed_groups(trials, ["variant", "seed"], ["val/fg_ari", "probe/x_r2"])
    rows = {(r["metric"], r["a"], r["b"]): r
            for r in published_comparison(groups, published, "val/fg_ari", "max")}
    assert set(rows) == {("val/fg_ari", x, y) for x, y in
                         [("a", "b"), ("a", "c"), ("a", "d"), ("b", "c"), ("b", "d"),
                          ("c", "d")]} | {("probe/x_r2", "a", "b")}
    verdict = {k[1:]: r["verdict"] for k, r in rows.items() if k[0] == "val/fg_ari"}
    assert verdict[("a", "b")] == "agrees"
    assert verdict[("a", "c")] == "agrees"  # 0.9 > 0.8 there, 0.8 > 0.41 here
    assert verdict[("b", "c")].startswith("not resolved")  # 0.40 vs 0.41: within noise
    assert verdict[("a", "d")] == verdict[("c", "d")] == "waiting for seeds"  # d: 1 seed
    ab = rows[("val/fg_ari", "a", "b")]
    assert ab["paper_diff"] == pytest.approx(0.2) and ab["n"] == "3 vs 3"
    assert ab["seeds_needed"] == 2  # 0.2 against a spread of ~0.01: two seeds suffice
    assert rows[("val/fg_ari", "a", "d")]["seeds_needed"] is None  # waiting: no spread yet
    assert ab["diff"] == pytest.approx(np.mean([t.metrics["val/fg_ari"] for t in trials[:3]])
                                       - np.mean([t.metrics["val/fg_ari"] for t in trials[3:6]]))
    assert rows[("probe/x_r2", "a", "b")]["p"] is None  # no spread at all: no test
    assert rows[("probe/x_r2", "a", "b")]["verdict"].startswith("not resolved")

    # Reversed published order flips every published difference: a disagreement.
    flipped = Published(source="T", values={"b": {"val/fg_ari": 0.9}, "a": {"val/fg_ari": 0.7}})
    (row,) = published_comparison(groups, flipped, "val/fg_ari", "max")
    assert (row["a"], row["b"], row["verdict"]) == ("b", "a", "disagrees")

    text = markdown({"sweep": "s", "instance": "run-001", "counts": {"finished": 10},
                     "seed_groups": [], "columns": [], "rows": [], "metric": "val/fg_ari",
                     "mode": "max", "tests": [], "baselines": {},
                     "published": {"source": "Table 1", "labels": {"val/fg_ari": "FG-ARI"},
                                   "rows": [row]}})
    assert "Against the published values (Table 1)" in text
    assert "| FG-ARI | b vs a | 0.900 vs 0.700 | " in text and "| disagrees | 2 |" in text
