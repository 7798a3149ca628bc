"""What bridge-fit and bridge-evaluate check of a cells store before fitting anything:
a valid time course (`fit.check_snapshots`), no snapshot below `bridge.<x>.min_cells`,
and held-out splits (`evaluate.holdout`) inside its snapshots with something to predict.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from .options import BridgeOptions
from .splits import splits_from_config

__all__ = ["check_cells"]


def check_cells(
    snapshots: list[np.ndarray], times: list[float], opts: BridgeOptions, experiment: str, where: object
) -> list[list[int]]:
    """Check the snapshots read from the cells store `where` against the experiment's
    options; return the held-out splits. InputError naming the store and the snapshot,
    ConfigError naming `bridge.<experiment>.<key>`."""
    from .fit import check_snapshots

    check_snapshots(snapshots, times, where)
    small = [(t, int(x.shape[0])) for x, t in zip(snapshots, times) if x.shape[0] < opts.min_cells]
    if small:
        t, n = small[0]
        more = f" ({len(small)} snapshots are below it)" if len(small) > 1 else ""
        raise InputError(
            f"snapshot at time {t:g} has {n} cells, fewer than bridge.{experiment}.min_cells = {opts.min_cells}{more}: "
            "a bridge is neither fitted nor scored on so few cells (lower min_cells only if so few cells can stand for a snapshot)",
            where,
        )
    return splits_from_config(
        opts.evaluate.holdout, len(times), key=f"bridge.{experiment}.evaluate.holdout", where="the cells store"
    )
