"""End-to-end half of test_report.py: the tests marked slow (see that file)."""

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

from slotsweep.reporting.seeds import mean_ci, seeds_for_power
from tests.support.browser import chromium, mlflow_server, require_chromium
from tests.support.reports import make_report
from tests.support.sweeps import mlflow_runs, run, sweep_file


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
