"""The ledger: a record of every trial that ended, in the sweep instance's storage.

Tune snapshots its experiment every second; a driver killed between a trial's end and
the next snapshot would run that trial again. The ledger is written when the trial ends,
so a resumed trial listed here reports its recorded result instead.

Two layouts, one per kind of storage:
- local (or NFS): `<instance>/ledger.jsonl`, one JSON line per trial, appended and
  fsync'd (a torn last line after a crash is skipped);
- object storage (s3://...), which cannot append: `<instance>/ledger/<trial_id>.json`,
  one object per trial, written in one PUT (atomic). Entries never change once written,
  so a reader fetches each object once and afterwards lists only the new ones.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slotsweep.sweep.location import Location

LEDGER = "ledger.jsonl"
LEDGER_OBJECTS = "ledger"  # the folder of one-object-per-trial entries on object storage


class Ledger:
    """The ledger of one sweep instance (`instance`: its folder, local or remote)."""

    def __init__(self, instance: Location | str | os.PathLike) -> None:
        self.instance = instance if isinstance(instance, Location) else Location.of(instance)
        self._seen: dict[str, dict[str, Any]] = {}  # remote entries already fetched

    def __getstate__(self) -> dict[str, Any]:
        return {"instance": self.instance, "_seen": {}}

    def read(self) -> dict[str, dict[str, Any]]:
        """Every entry, by trial id."""
        if not self.instance.remote:
            return read_ledger(self.instance.path / LEDGER)
        for obj in (self.instance / LEDGER_OBJECTS).children("*.json", dirs=False):
            if obj.name not in self._seen:
                self._seen[obj.name] = json.loads(obj.read_text())
        return {e["trial_id"]: e for e in self._seen.values()}

    def append(self, entry: dict[str, Any]) -> None:
        if not self.instance.remote:
            append_ledger(self.instance.path / LEDGER, entry)
        else:
            (self.instance / LEDGER_OBJECTS / f"{entry['trial_id']}.json").write(
                json.dumps(entry))

    def ended_before(self, trial_id: str, params: dict[str, Any]) -> dict[str, Any] | None:
        """The entry of this trial, or of an ended trial with identical parameters (a
        trial Tune re-suggested from a snapshot older than its end). Trials are
        deterministic given their parameters, so the recorded result is the result."""
        entries = self.read()
        if trial_id in entries:
            return entries[trial_id]
        return ended_with(entries, params)


def read_ledger(path: Path) -> dict[str, dict[str, Any]]:
    """The entries of a local `ledger.jsonl`, by trial id."""
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line after a crash
        out[entry["trial_id"]] = entry
    return out


def ended_with(entries: dict[str, dict[str, Any]], params: dict[str, Any]
               ) -> dict[str, Any] | None:
    """The ledger entry of an ended trial with exactly these parameters, if any."""
    return next((e for e in entries.values() if e["params"] == params), None)


def append_ledger(path: Path, entry: dict[str, Any]) -> None:
    with path.open("ab") as f:
        torn = f.tell() > 0 and path.read_bytes()[-1:] != b"\n"  # a full disk tore a line
        f.write((("\n" if torn else "") + json.dumps(entry) + "\n").encode())
        f.flush()
        os.fsync(f.fileno())


@dataclass
class TrialRecord:
    """A trial of a sweep instance with its last result: from Tune, or the ledger."""

    trial_id: str
    params: dict[str, Any]
    metrics: dict[str, Any]
    outcome: str
    error: str | None = None
