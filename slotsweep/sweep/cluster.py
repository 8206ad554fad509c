"""Joining Ray: the cluster a sweep runs on, and the checks that it can run a trial."""

from __future__ import annotations

import logging
import os
from typing import Any

import ray

from slotsweep.config_io import ConfigError
from slotsweep.sweep.spec import Sweep

log = logging.getLogger(__name__)


def connect(address: str | None, *, num_cpus: int | None = None) -> str:
    """Join a running cluster (`auto`, `ray://...`, host:port) or start a local one.

    Default: RAY_ADDRESS if set, else the cluster that `ray start` began on this machine
    (a `ray up` head node) while it is still up, else a new local instance. Another
    sweep's own local instance is never joined: it ends with that sweep's driver, and
    would take this sweep's trials with it. Returns what was joined.
    """
    from slotsweep.sweep.console import busy_machine_note

    if address is None:
        address = os.environ.get("RAY_ADDRESS") or _ray_start_cluster() or "local"
    kwargs: dict[str, Any] = {"address": address, "log_to_driver": True}
    if address == "local":
        kwargs.update(num_cpus=num_cpus, include_dashboard=False)
    load = os.getloadavg()[0]  # other processes' work, before Ray adds its own
    ray.init(**kwargs)
    note = busy_machine_note(load, os.cpu_count() or 1, os.environ)
    if address == "local" and note:
        log.warning(note)
    return address


def _ray_start_cluster() -> str | None:
    """The GCS address that the last `ray start` on this machine recorded, if its GCS
    still runs here (Ray's own rule for `ray.init()`, plus a liveness check, since a
    killed cluster leaves the record behind)."""
    try:
        from ray._private.services import find_gcs_addresses
        from ray._private.utils import read_ray_address

        recorded = read_ray_address()
        return recorded if recorded and recorded in find_gcs_addresses() else None
    except Exception:  # noqa: BLE001 - private helpers moved: start a local instance
        return None


def check_resources(sweep: Sweep, *, started_locally: bool) -> None:
    """Fail before any trial starts when no node of a local Ray instance could run one.

    A trial's CPUs and GPUs must all be on one node, so the largest node counts, not the
    cluster's sum. A cluster that was joined may grow: an autoscaler (`ray up`, KubeRay)
    adds GPU workers when trials wait for them, and this driver cannot tell whether one
    runs. There a trial that no node can hold now is a warning, not an error.
    """
    need = sweep.spec.resources
    gpus, cpus = _largest_node()
    problem = None
    if need.gpu > gpus:
        has = "no GPU" if gpus == 0 else f"at most {gpus:g} GPU on a node"
        problem = (f"{sweep.path}: resources.gpu: {need.gpu} GPU per trial, but this Ray "
                   f"cluster has {has}")
        way_out = ("run it on the CPUs with --gpus-per-trial 0 --set train.device=cpu "
                   "(or set resources.gpu: 0 and train.device: cpu), or on a GPU cluster")
    elif need.cpu > cpus:
        problem = (f"{sweep.path}: resources.cpu: {need.cpu} CPUs per trial, but this Ray "
                   f"cluster has {cpus:g}" + ("" if started_locally else " on its largest node"))
        way_out = "lower it (--cpus-per-trial N)"
    if problem is None:
        return
    if started_locally:
        raise ConfigError(f"{problem}; {way_out}")
    log.warning("%s now; its trials wait until a node that can hold one joins (an "
                "autoscaler's worker); Ctrl-C stops the sweep, or %s", problem, way_out)


def _largest_node() -> tuple[float, float]:
    """(GPUs, CPUs) of the alive nodes with the most of each."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    return (max((n.get("GPU", 0.0) for n in nodes), default=0.0),
            max((n.get("CPU", 0.0) for n in nodes), default=0.0))
