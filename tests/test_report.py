"""The sweep dashboard (slotsweep.report) and the MLflow UI, checked in a real browser:
a real small sweep, the real report CLI, headless Chromium, a real `mlflow server`."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pytest
import yaml
from PIL import Image

from slotsweep.reporting.report import TrialView, param_figures
from slotsweep.seeds import mean_ci, seeds_for_power
from tests.browser import chromium, mlflow_server, require_chromium
from tests.sweep_helpers import mlflow_runs, run, sweep_file


@pytest.fixture(scope="module")
def swept(tmp_path_factory, dsprites16):
    """A finished 5-trial sweep over loss type, β, head depth and slot size."""
    tmp = tmp_path_factory.mktemp("report")
    path = sweep_file(tmp, dsprites16, search_space={
        "loss.type": {"choice": ["none", "covloss", "cosine"]},
        "loss.beta": {"loguniform": [1e-3, 1.0], "when": {"loss.type": ["covloss", "cosine"]}},
        "loss.proj_depth": {"choice": [1, 2], "when": {"loss.type": "covloss"}},
        "model.slot_size": {"choice": [8, 16]},
    }, search={"num_samples": 5, "max_concurrent": 2, "seed": 3})
    tree = yaml.safe_load(path.read_text())
    tree["config"]["eval"].update(probe=True, probe_train_images=48)  # the final step
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    result = run(path)
    assert result.returncode == 0, result.stderr[-3000:]
    client, parents, trials = mlflow_runs(tmp / "storage")
    assert len(trials) == 5
    for t in trials:  # the probe ran as each trial's final step and reached MLflow
        assert 0.0 <= t.data.metrics["probe/shape_acc"] <= 1.0
        assert "probe/x_r2" in t.data.metrics
    return tmp, path, client, trials


def make_report(tmp, path, *args: str) -> tuple[subprocess.CompletedProcess, str]:
    out = tmp / "report.html"
    proc = subprocess.run([sys.executable, "-m", "slotsweep.report", str(path), "--out",
                           str(out), *args], capture_output=True, text=True, timeout=300)
    return proc, out.read_text() if out.is_file() else ""


def linked_urls(html: str) -> list[str]:
    """src/href of every tag (not the text inside scripts, where Plotly names its site)."""
    found: list[str] = []

    class Links(HTMLParser):
        def handle_starttag(self, tag, attrs):
            found.extend(v or "" for k, v in attrs if k in ("src", "href"))

    Links().feed(html)
    return found


def fg_ari(run) -> float:
    return run.data.metrics["val/fg_ari"]


@pytest.mark.slow
def test_report_renders_plots_table_and_masks_in_chromium(swept):
    tmp, path, client, trials = swept
    proc, html = make_report(tmp, path)
    assert proc.returncode == 0, proc.stderr
    assert "5 trials" in proc.stdout
    # Self-contained: no tag loads anything from elsewhere (scripts, styles, images).
    assert [u for u in linked_urls(html) if not u.startswith(("data:", "#"))] == []

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with chromium() as browser:
        browser.set_window_size(1400, 2600)
        browser.get((tmp / "report.html").as_uri())
        plots = browser.find_elements(By.CSS_SELECTOR, "div.plot")
        assert len(plots) >= 11  # 3 metrics x (beta, depth, lr) + 2 curves
        WebDriverWait(browser, 60).until(lambda b: all(
            p.find_elements(By.CSS_SELECTOR, "svg.main-svg") for p in plots))

        def points(plot_id: str) -> int:
            return browser.execute_script(
                f"return document.querySelectorAll('#{plot_id} .scatterlayer .point').length")

        scored = [t for t in trials if "val/fg_ari" in t.data.metrics]
        with_beta = [t for t in scored if t.data.params["loss.type"] != "none"]
        assert points("fig-fg_ari-train-lr") == len(scored)
        assert points("fig-fg_ari-loss-beta") == len(with_beta)  # β means nothing without
        steps = {len(client.get_metric_history(t.info.run_id, "val/fg_ari")) for t in scored}
        assert points("curve-fg_ari") == sum(
            len(client.get_metric_history(t.info.run_id, "val/fg_ari")) for t in scored)
        assert steps and min(steps) >= 2

        rows = browser.find_elements(By.CSS_SELECTOR, "#trials tbody tr")
        assert len(rows) == len(trials)

        def column(key: str) -> list[str]:
            return [td.text for td in browser.find_elements(
                By.CSS_SELECTOR, f"#trials tbody td[data-key='{key}']")]

        by_trial = {t.data.tags["slotsweep.trial_id"]: t for t in trials}
        shown = dict(zip(column("trial"), column("val/fg_ari"), strict=True))
        assert shown == {k: f"{fg_ari(t):.3f}" for k, t in by_trial.items()}
        ranked = sorted(by_trial, key=lambda k: -fg_ari(by_trial[k]))
        assert column("trial") == ranked  # sorted by the sweep's metric, best first
        fg_header = browser.find_element(By.CSS_SELECTOR, "#trials th[data-key='val/fg_ari']")
        fg_header.click()
        assert column("trial") == ranked[::-1]
        assert fg_header.get_attribute("aria-sort") == "ascending"
        browser.find_element(By.CSS_SELECTOR, "#trials th[data-key='trial']").click()
        assert column("trial") == sorted(by_trial)
        assert browser.find_element(By.CSS_SELECTOR, "tr.best").get_attribute(
            "data-trial") == ranked[0]

        shape = dict(zip(column("trial"), column("probe/shape_acc"), strict=True))
        assert shape == {k: f"{t.data.metrics['probe/shape_acc']:.3f}"
                         for k, t in by_trial.items()}

        # Each loss term's final training value, in e-notation when tiny; "–" where a
        # trial's loss type has no such term.
        def shown_as(v: float) -> str:
            return f"{v:.3f}" if abs(v) >= 0.01 else f"{v:.2e}"

        terms = [k for k in ("train/recon", "train/covariance", "train/cosine")
                 if any(k in t.data.metrics for t in trials)]
        assert "train/recon" in terms
        for key in terms:
            cells = dict(zip(column("trial"), column(key), strict=True))
            assert cells == {k: shown_as(t.data.metrics[key]) if key in t.data.metrics
                             else "–" for k, t in by_trial.items()}, key

        progress = browser.find_element(By.ID, "progress")
        outcomes = [t.data.tags["slotsweep.outcome"] for t in trials]
        assert int(progress.get_attribute("data-finished")) == outcomes.count("finished")
        assert int(progress.get_attribute("data-pending")) == 0
        assert not browser.find_elements(By.ID, "steps")  # nothing left to train
        against = browser.find_element(By.ID, "against").text
        best_fg = fg_ari(by_trial[ranked[0]])
        assert against.startswith(
            f"Best trial against the best trivial baseline: FG-ARI {best_fg:.3f} vs "), against
        assert "(blocks " in against and against.endswith(("both.", "only.", "blocks."))
        for image in ("best-masks", "baseline-masks"):
            width = browser.execute_script(
                f"return document.getElementById('{image}').naturalWidth")
            assert width > 0, image
        fetched = browser.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)")
        assert [u for u in fetched if not u.startswith(("data:", "file:"))] == []
        shot = tmp / "report.png"
        browser.save_screenshot(str(shot))
        full_height = browser.execute_script("return document.documentElement.scrollHeight")
    picture = Image.open(io.BytesIO(shot.read_bytes())).convert("RGB")
    assert picture.size[0] >= 1000
    assert len(picture.getcolors(1 << 24)) > 200  # plots, masks and text, not a blank page

    # --png: the report's own picture of the whole page, for a README or an issue.
    proc, _ = make_report(tmp, path, "--png", str(tmp / "page.png"))
    assert proc.returncode == 0, proc.stderr
    page = Image.open(tmp / "page.png").convert("RGB")
    assert page.size[0] >= 1000 and page.size[1] >= full_height  # all of it, not a window
    bottom = page.crop((0, page.size[1] * 9 // 10, page.size[0], page.size[1]))
    assert len(bottom.getcolors(1 << 24)) > 20  # the page's end (table, text) is in it


@pytest.mark.slow
def test_mlflow_server_lists_trial_runs_with_fg_ari(swept):
    tmp, path, client, trials = swept
    from urllib.parse import quote

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    require_chromium()
    experiment = trials[0].info.experiment_id
    ranked = sorted(trials, key=lambda t: -fg_ari(t))
    store = f"sqlite:///{tmp / 'storage' / 'tiny' / 'mlflow.db'}"
    with mlflow_server(store, tmp / "mlflow-server.log") as (url, proc), chromium() as browser:
        assert "127.0.0.1" in url
        query = (f"searchFilter={quote(chr(96).join(['tags.', 'slotsweep.role', '']))}"
                 f"{quote(' = ' + repr('trial'))}&orderByKey={quote('metrics.`val/fg_ari`')}"
                 "&orderByAsc=false")
        browser.get(f"{url}/#/experiments/{experiment}/runs?{query}")

        def run_links(b):
            links = [a.text for a in b.find_elements(By.CSS_SELECTOR, "a[href*='/runs/']")]
            return links if len(links) >= len(trials) else None

        names = WebDriverWait(browser, 90).until(run_links)
        trial_order = [n.split()[0] for n in names if n.split()]
        # Every trial is listed, ordered by the FG-ARI the sweep logged.
        assert trial_order == [t.data.tags["slotsweep.trial_id"] for t in ranked]
        for run_ in (ranked[0], ranked[-1]):
            browser.get(f"{url}/#/experiments/{experiment}/runs/{run_.info.run_id}")
            WebDriverWait(browser, 60).until(
                lambda b: "val/fg_ari" in b.find_element(By.TAG_NAME, "body").text)
            text = browser.find_element(By.TAG_NAME, "body").text
            assert re.search(r"val/fg_ari\s+" + re.escape(f"{fg_ari(run_):.4f}"), text), text[:2000]
        assert proc.poll() is None  # the server served it all


@pytest.mark.slow
def test_a_mistyped_instance_or_unwritable_output_is_an_error_not_a_page(swept):
    """Neither writes a page: a wrong --instance used to render '0 trials' over the real
    report, an unwritable --out ended in a traceback."""
    tmp, path, _, _ = swept

    def report_to(out, *args):
        return subprocess.run([sys.executable, "-m", "slotsweep.report", str(path), "--out",
                               str(out), "--no-baselines", *args],
                              capture_output=True, text=True, timeout=300)

    proc = report_to(tmp / "typo.html", "--instance", "run-009")
    assert proc.returncode == 2 and not (tmp / "typo.html").exists()
    assert "no instance 'run-009'" in proc.stderr and "instances here: run-001" in proc.stderr
    (tmp / "plain").write_text("not a folder")
    proc = report_to(tmp / "plain" / "r.html")
    assert proc.returncode == 2 and "error: cannot write " in proc.stderr
    assert "plain" in proc.stderr and "Traceback" not in proc.stderr


def test_report_without_a_store_names_the_sweep_and_the_path(tmp_path, dsprites16):
    path = sweep_file(tmp_path, dsprites16)
    proc, html = make_report(tmp_path, path)
    assert proc.returncode == 2
    assert "tiny" in proc.stderr and "mlflow.db" in proc.stderr and "run the sweep" in proc.stderr
    assert html == ""
    from tests.browser import free_port

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
    from slotsweep.seeds import loss_type_tests, seed_groups

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


@pytest.mark.slow
def test_variants_over_seeds_report_mean_and_interval(tmp_path, dsprites16):
    path = sweep_file(tmp_path, dsprites16, search={"algorithm": "grid", "num_samples": 1,
                                                    "max_concurrent": 2})
    tree = yaml.safe_load(path.read_text())
    tree.pop("search_space")
    tree.update(variants={"plain": {"loss.type": "none"},
                          "cosine": {"loss.type": "cosine", "loss.beta": 0.1}}, seeds=2,
                published={"source": "Table 9", "values": {"plain": {"val/fg_ari": 0.9},
                                                           "cosine": {"val/fg_ari": 0.8}}})
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    done = run(path)
    assert done.returncode == 0, done.stderr[-3000:]
    client, _, trials = mlflow_runs(tmp_path / "storage")
    assert sorted((r.data.params["variant"], r.data.params["seed"]) for r in trials) == [
        ("cosine", "0"), ("cosine", "1"), ("plain", "0"), ("plain", "1")]
    proc, html = make_report(tmp_path, path, "--markdown", str(tmp_path / "results.md"))
    assert proc.returncode == 0, proc.stderr
    # The Markdown summary: one row per variant with the mean ± CI of its seeds' FG-ARI,
    # and the Welch test between the two loss types.
    summary = (tmp_path / "results.md").read_text()
    for variant, loss in (("plain", "none"), ("cosine", "cosine")):
        values = [r.data.metrics["val/fg_ari"] for r in trials
                  if r.data.params["variant"] == variant]
        mean, half = mean_ci(values)
        assert f"| variant={variant} | {loss} | 2 | {mean:.3f} ± {half:.3f} |" in summary
    assert "| p (Welch) |" in summary
    best = max(trials, key=lambda r: r.data.metrics["val/fg_ari"])
    assert (f"Best trial `{best.data.tags['slotsweep.trial_id']}` against the best trivial "
            f"baseline: FG-ARI {best.data.metrics['val/fg_ari']:.3f} vs ") in summary
    # The published difference (plain above cosine) next to this sweep's.
    means = {v: np.mean([r.data.metrics["val/fg_ari"] for r in trials
                         if r.data.params["variant"] == v]) for v in ("plain", "cosine")}
    assert f"| FG-ARI | plain vs cosine | 0.900 vs 0.800 | {means['plain']:.3f} ± " in summary
    with chromium() as browser:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        browser.get((tmp_path / "report.html").as_uri())
        WebDriverWait(browser, 60).until(
            lambda b: b.find_elements(By.CSS_SELECTOR, "#fig-seeds svg.main-svg"))
        rows = browser.find_elements(By.CSS_SELECTOR, "#seeds tbody tr")
        assert [r.get_attribute("data-n") for r in rows] == ["2", "2"]
        for row in rows:
            variant = row.find_element(By.TAG_NAME, "td").text.removeprefix("variant=")
            values = [r.data.metrics["val/fg_ari"] for r in trials
                      if r.data.params["variant"] == variant]
            mean = np.mean(values)
            cell = row.find_element(By.CSS_SELECTOR, "td[data-key='val/fg_ari']").text
            assert cell.startswith(f"{mean:.3f} ± "), (cell, values)
        assert len(browser.find_elements(By.CSS_SELECTOR, "#tests tbody tr")) == 1
        (row,) = browser.find_elements(By.CSS_SELECTOR, "#published tbody tr")
        assert row.get_attribute("data-verdict") in ("agrees", "disagrees",
                                                     "not resolved (same direction)",
                                                     "not resolved (other direction)")
        cells = row.find_elements(By.TAG_NAME, "td")
        assert cells[3].text.startswith(f"{means['plain']:.3f} ± ")
        values = {v: [r.data.metrics["val/fg_ari"] for r in trials
                      if r.data.params["variant"] == v] for v in ("plain", "cosine")}
        needed = seeds_for_power(0.1, values["plain"], values["cosine"])
        assert cells[7].text == (str(needed) if needed else "> 100")


def test_seed_statistics_count_finished_trials_only():
    """A half-done seeded sweep: running and failed seeds are counted beside the finished
    ones, never averaged into them (they stand at another step, or at none)."""
    from slotsweep.reporting.report import markdown
    from slotsweep.seeds import seed_groups, seeds_label

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
    from slotsweep.reporting.report import markdown, step_progress

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
    from slotsweep.reporting.report import step_progress

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

    from slotsweep.reporting.report import wall_pace

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
    from slotsweep.chromium import ChromiumError, screenshot

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
            "from slotsweep.chromium import ChromiumError, screenshot\n"
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
    from slotsweep.reporting.report import markdown

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
    from slotsweep.reporting.report import markdown
    from slotsweep.seeds import published_comparison, seed_groups
    from slotsweep.sweep_spec import Published

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
