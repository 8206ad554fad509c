"""Run a named sweep: `python -m slotsweep.run NAME` (or `slotsweep run NAME`).

    python -m slotsweep.run quickstart                 # CPU, synthetic data, minutes
    python -m slotsweep.run coco_beta_sweep            # on a Ray GPU cluster
    python -m slotsweep.run coco_beta_sweep            # again after an interruption: resumes
    python -m slotsweep.run quickstart --num-samples 12  # extend a finished sweep
    python -m slotsweep.run quickstart --dry-run       # validate and show, start nothing

A driver that seems stuck prints every thread's stack to stderr on `kill -USR2 PID`
(Tune takes SIGUSR1 as Ctrl-C).
"""

from __future__ import annotations

import argparse
import faulthandler
import signal
import sys
from typing import TYPE_CHECKING

from slotsweep.cli import add_common_options, add_sweep_storage_options, positive_int, setup_logging
from slotsweep.shipped import known_sweeps

if TYPE_CHECKING:
    pass

# Nothing above imports pydantic, torch, Ray or MLflow, so `--help` and a usage error
# answer at once; main() imports what the command needs.


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


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.sweep is None:
        p.error("name a sweep: " + ", ".join(known_sweeps()) + " (or a path to a YAML)")
    setup_logging(args.verbose - args.quiet)
    faulthandler.register(signal.SIGUSR2, all_threads=True)  # see the module's docstring
    from slotsweep.config_io import ConfigError, parse_override
    from slotsweep.data.format import ShardError
    from slotsweep.sweep import console
    from slotsweep.sweep.load import load_sweep
    from slotsweep.sweep.spec import with_resources

    try:
        overrides = dict(parse_override(o) for o in args.overrides)
        sweep = load_sweep(args.sweep, overrides)
        if args.cpus_per_trial is not None or args.gpus_per_trial is not None:
            sweep = with_resources(sweep, args.cpus_per_trial, args.gpus_per_trial)
        if args.dry_run:
            print(console.dry_run(sweep))
            return 0
        from slotsweep.sweep import cluster, driver

        driver.preflight(sweep, storage=args.storage, tracking_uri=args.tracking_uri)
        try:
            started = cluster.connect(args.address, num_cpus=args.num_cpus)
        except ConnectionError as exc:
            print(f"error: cannot connect to Ray at {args.address or 'auto'}: "
                  f"{str(exc).strip().splitlines()[0]}; if the cluster uses token "
                  "authentication, export RAY_AUTH_MODE=token", file=sys.stderr)
            return 2
        cluster.check_resources(sweep, started_locally=started == "local")
        result = driver.run_sweep(sweep, num_samples=args.num_samples, storage=args.storage,
                                  tracking_uri=args.tracking_uri, fresh=args.fresh,
                                  verbose=0 if args.quiet else min(3, 1 + args.verbose))
        _disconnect_ray()  # the summary is the last thing printed, after any worker line
        print(console.summary(sweep, result, started))
        if console.unfinished_trials(result):
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
        message = console.storage_message(exc)
        if message is None:
            raise
        _disconnect_ray()
        print(f"error: {message}", file=sys.stderr)
        return 3
    return 0


def _disconnect_ray() -> None:
    """Stop Ray's forwarding of worker output, so that the summary or the error is the
    last thing printed (a worker's late log line would otherwise land after it)."""
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
