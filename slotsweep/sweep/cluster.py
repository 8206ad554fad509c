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
    """Fail before any trial starts when no node could ever run one."""
    need = sweep.spec.resources
    have = ray.cluster_resources()
    if need.gpu > 0 and have.get("GPU", 0) == 0 and started_locally:
        raise ConfigError(
            f"{sweep.path}: resources.gpu: {need.gpu} GPU per trial, but this Ray cluster "
            "has no GPU; run it on the CPUs with --gpus-per-trial 0 --set train.device=cpu "
            "(or set resources.gpu: 0 and train.device: cpu), or on a GPU cluster"
        )
    if need.cpu > have.get("CPU", 0) and started_locally:
        raise ConfigError(
            f"{sweep.path}: resources.cpu: {need.cpu} CPUs per trial, but this Ray cluster "
            f"has {have.get('CPU', 0):g}; lower it (--cpus-per-trial N)"
        )
