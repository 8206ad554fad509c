"""A sweep's report: `python -m slotsweep.report NAME` → one self-contained HTML page.

    python -m slotsweep.report quickstart                  # → dashboards/reports/quickstart.html
    python -m slotsweep.report coco_beta_sweep --out /tmp/coco.html
    python -m slotsweep.report paper_small --markdown results.md   # + a Markdown summary
    python -m slotsweep.report paper_small --png page.png  # + a picture of the page

It reads the sweep's trial runs from MLflow (the store `slotsweep.run` writes): scores
against every searched parameter, learning curves, the best trial's masks beside the
block baseline's, every trial in a sortable table, and the sweep's progress. The page
itself is built by slotsweep.reporting.page.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from slotsweep.cli import add_common_options, add_sweep_storage_options, setup_logging

# Nothing above imports MLflow, torch or plotly: `--help` answers at once.


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m slotsweep.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep", help="a name in sweeps/ or a path to a sweep YAML")
    p.add_argument("--out", help="HTML file (default: dashboards/reports/NAME.html)")
    add_sweep_storage_options(p)
    p.add_argument("--instance", help="a sweep instance, e.g. run-001 (default: the latest)")
    p.add_argument("--all-instances", action="store_true",
                   help="every instance of the sweep (--fresh starts a new one) in one page")
    p.add_argument("--no-baselines", action="store_true",
                   help="skip the trivial baselines (they read the validation shards)")
    p.add_argument("--markdown", metavar="FILE",
                   help="also write the summary tables as Markdown ('-': standard output)")
    p.add_argument("--png", metavar="FILE",
                   help="also save a picture of the whole page (headless Chromium)")
    add_common_options(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    setup_logging(args.verbose - args.quiet)
    # One mask picture per report: MLflow's download progress bar is noise on stderr.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from slotsweep.config_io import ConfigError
    from slotsweep.reporting.markdown import markdown
    from slotsweep.reporting.page import render, report, write_page
    from slotsweep.sweep.load import load_sweep

    try:
        sweep = load_sweep(args.sweep)
        context, count = report(sweep, storage=args.storage, tracking_uri=args.tracking_uri,
                                instance=args.instance, all_instances=args.all_instances,
                                with_baselines=not args.no_baselines)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out or Path("dashboards") / "reports" / f"{sweep.name}.html")
    try:
        write_page(out, render(context))
        print(f"{out}: {count} trials of {sweep.name}")
        if args.markdown == "-":
            print(markdown(context), end="")
        elif args.markdown:
            write_page(Path(args.markdown), markdown(context))
            print(f"{args.markdown}: summary tables")
    except OSError as exc:
        print(f"error: cannot write {exc.filename or out}: {exc.strerror or exc}",
              file=sys.stderr)
        return 2
    if args.png:
        from slotsweep.reporting.chromium import ChromiumError, screenshot

        try:
            screenshot(out, Path(args.png))
        except ChromiumError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"{args.png}: a picture of the page")
    return 0


if __name__ == "__main__":
    sys.exit(main())
