"""Headless Chromium through Selenium (the dev extra): pictures of rendered report pages,
and the browser the UI tests drive.

    python -m slotsweep.report quickstart --png dashboards/quickstart.png
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    # Chromium's own background traffic is refused by a closed network; keep it quiet.
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1400,1000")


class ChromiumError(RuntimeError):
    """No browser or driver to work with; says what to install."""


def find() -> tuple[str, str]:
    """The browser ($SLOTSWEEP_CHROMIUM or `chromium` on the PATH) and its driver
    ($SLOTSWEEP_CHROMEDRIVER or `chromedriver`)."""
    browser = os.environ.get("SLOTSWEEP_CHROMIUM") or shutil.which("chromium")
    driver = os.environ.get("SLOTSWEEP_CHROMEDRIVER") or shutil.which("chromedriver")
    if not (browser and Path(browser).is_file() and driver and Path(driver).is_file()):
        raise ChromiumError("this needs Chromium and its driver (apt install chromium "
                            "chromium-driver, or set $SLOTSWEEP_CHROMIUM and "
                            "$SLOTSWEEP_CHROMEDRIVER)")
    return browser, driver


def require_selenium() -> None:
    """Selenium comes with the dev extra; without it, say so instead of a traceback."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        raise ChromiumError("this needs selenium: pip install -e '.[dev]'") from None


@contextlib.contextmanager
def headless(browser: str, driver: str) -> Iterator:
    """A Selenium WebDriver on headless Chromium with a fresh profile, quit on exit."""
    require_selenium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = browser
        for flag in (*FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        session = webdriver.Chrome(options=options, service=Service(driver))
        try:
            yield session
        finally:
            session.quit()


def screenshot(html: Path, png: Path, *, width: int = 1400, timeout: float = 120) -> None:
    """The whole rendered page as a PNG (for a README or an issue), once every Plotly
    plot on it has drawn."""
    require_selenium()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with headless(*find()) as page:
        page.set_window_size(width, 1000)
        page.get(html.resolve().as_uri())
        WebDriverWait(page, timeout).until(lambda d: all(
            p.find_elements(By.CSS_SELECTOR, "svg.main-svg")
            for p in d.find_elements(By.CSS_SELECTOR, "div.plot")))
        for _ in range(4):  # grow the window until the page fits (plots reflow)
            full, view = page.execute_script(
                "return [document.documentElement.scrollHeight, window.innerHeight]")
            if view >= full:
                break
            page.set_window_size(width, page.get_window_size()["height"] + full - view)
        png.parent.mkdir(parents=True, exist_ok=True)
        tmp = png.with_name(png.name + ".tmp.png")
        if not page.save_screenshot(str(tmp)):
            raise ChromiumError(f"Chromium took no picture of {html}")
        tmp.replace(png)
