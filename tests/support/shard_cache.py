"""What a trial on a node does first with a remote split, as a separate process for the
tests that start several at once: wait for the others, then open the split. Kept apart
from the test module so that a spawned process imports only the cache, not torch."""

from __future__ import annotations

from pathlib import Path

from slotsweep.data.remote import local_split


def open_at_once(uri: str, cache: str, barrier, results) -> None:
    barrier.wait()
    results.put(str(local_split(uri, cache=Path(cache))))
