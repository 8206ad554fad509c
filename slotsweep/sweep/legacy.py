"""The old names of classes that sweep storages hold in pickles.

Tune pickles the searcher (with our `OptunaSpace` and the `Sweep` inside it) and the
RunConfig (with our `TrackingCallback` and its `SweepTracker`) into the experiment
folder, under the module paths of the code that wrote them. Until December 2026
(commit 97db71b) those were `slotsweep.sweep`, `slotsweep.sweep_spec` and
`slotsweep.tracking`. A storage written then resumes when these names resolve again:
tests/e2e/test_old_storage.py resumes one, kept as data.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

OLD_MODULES = {
    "slotsweep.sweep_spec": "slotsweep.sweep.spec",
    "slotsweep.tracking": "slotsweep.sweep.tracking",
}
# Names that `slotsweep.sweep` (then a module, now this package) defined.
OLD_NAMES = {
    "OptunaSpace": "slotsweep.sweep.space",
    "TrackingCallback": "slotsweep.sweep.callback",
}


def register_old_modules() -> None:
    """Make the old module paths import as the modules that now hold their classes."""
    for old, new in OLD_MODULES.items():
        sys.modules.setdefault(old, importlib.import_module(new))


def moved(name: str) -> Any:
    """`slotsweep.sweep.<name>` for a name that module used to define."""
    if name not in OLD_NAMES:
        raise AttributeError(f"module 'slotsweep.sweep' has no attribute {name!r}")
    return getattr(importlib.import_module(OLD_NAMES[name]), name)
