"""The ledger: one JSON line per trial that ended (`<instance>/ledger.jsonl`).

Tune snapshots its experiment every second; a driver killed between a trial's end and
the next snapshot would run that trial again. The ledger is written when the trial ends
(fsync'd), so a resumed trial listed here reports its recorded result instead.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LEDGER = "ledger.jsonl"


def read_ledger(path: Path) -> dict[str, dict[str, Any]]:
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


def ended_before(path: Path, trial_id: str, params: dict[str, Any]) -> dict[str, Any] | None:
    """The ledger entry of this trial, or of an ended trial with identical parameters
    (a trial Tune re-suggested from a snapshot older than its end). Trials are
    deterministic given their parameters, so the recorded result is the result."""
    entries = read_ledger(path)
    if trial_id in entries:
        return entries[trial_id]
    return ended_with(entries, params)


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
