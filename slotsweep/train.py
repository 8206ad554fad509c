"""Train one slot model without Ray: `python -m slotsweep.train CONFIG [KEY=VALUE ...]`.

    python -m slotsweep.train configs/dsprites_small.yaml train.steps=2000
    python -m slotsweep.train configs/dsprites_small.yaml --tracking-uri sqlite:///mlflow.db

Checkpoints go to the workdir; rerunning the same command resumes from the latest one.
With a tracking URI (or $MLFLOW_TRACKING_URI) every evaluation is logged to one MLflow
run, which a resumed rerun continues. The loop itself is slotsweep.training.loop.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from slotsweep.cli import add_common_options, setup_logging

# Nothing above imports torch or MLflow, so `--help` and a usage error answer at once.
log = logging.getLogger("slotsweep.train")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m slotsweep.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="trial config YAML (e.g. configs/dsprites_small.yaml)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted overrides, e.g. loss.beta=0.1")
    p.add_argument("--workdir", default=None,
                   help="checkpoints go here; rerunning resumes (default: runs/<config name>)")
    p.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"),
                   help="log the run to MLflow here (default: $MLFLOW_TRACKING_URI; "
                        "none: log nowhere)")
    p.add_argument("--experiment", default=None,
                   help="MLflow experiment (default: the config file's name)")
    add_common_options(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_intermixed_args(argv)
    setup_logging(args.verbose - args.quiet)
    from slotsweep.config import load_config
    from slotsweep.config_io import ConfigError
    from slotsweep.data.format import ShardError
    from slotsweep.training import checkpoint
    from slotsweep.training.loop import (
        NonFiniteLossError,
        OutOfMemoryError,
        fit,
        progress_line,
    )

    tracker = None
    try:
        config = load_config(args.config, args.overrides)
        workdir = Path(args.workdir or f"runs/{Path(args.config).stem}")
        if args.tracking_uri:
            tracker = _tracker(args, config, workdir)
        result = fit(config, tracker.report if tracker else None, workdir=workdir,
                     log=log.info)
    except (ConfigError, ShardError, checkpoint.CheckpointError, NonFiniteLossError,
            OutOfMemoryError) as exc:
        _end(tracker, "FAILED")
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the workdir cannot be written (a file in the way, full, read-only)
        _end(tracker, "FAILED")
        where = f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc)
        print(f"error: {where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _end(tracker, "KILLED")
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    _end(tracker, "FINISHED")
    print(f"done: {progress_line(result, config.train.steps)}")
    if tracker is not None:
        print(f"MLflow: run {tracker.run_id} in experiment {tracker.experiment_id} "
              f"at {args.tracking_uri}")
    return 0


def _tracker(args, config, workdir: Path):
    from slotsweep.sweep.tracking import RunTracker, check_tracking_server

    check_tracking_server(args.tracking_uri)
    return RunTracker(args.tracking_uri, args.experiment or Path(args.config).stem, workdir,
                      name=workdir.name, params=config.flat(),
                      config_yaml=config.to_yaml())


def _end(tracker, status: str) -> None:
    if tracker is not None:
        tracker.end(status)


if __name__ == "__main__":
    sys.exit(main())
