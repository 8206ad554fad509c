"""A sweep on Ray Tune: the sweep file (`spec`), the search space (`space`), the trial
that runs in a Ray worker (`trial`), the ledger of ended trials (`ledger`), the storage
checks (`storage`), the Tune callback (`callback`), MLflow (`tracking`, the only module
that imports mlflow), the driver that runs and resumes it all (`driver`), and what the
command line prints (`console`).

Sweep storages written before this layout hold pickles (Tune's `tuner.pkl`, the searcher
state) that name classes by their old places; `legacy` maps them, and the attribute hook
below answers the old `slotsweep.sweep.OptunaSpace` and `slotsweep.sweep.TrackingCallback`.
"""

from typing import Any


def __getattr__(name: str) -> Any:  # PEP 562: imported only when an old pickle asks
    from slotsweep.sweep.legacy import moved

    return moved(name)
