"""The held-out splits of `bridge.<x>.evaluate.holdout`, checked against the number of
snapshots: by the config check when the snapshots are simulated (`cells.<d>.simulate.times`
says how many), and at the start of bridge-fit and bridge-evaluate from the cells store,
before anything is fitted. Plain Python (no torch), so the config check can use it.
"""

from __future__ import annotations

from ..errors import ConfigError

__all__ = ["splits_from_config"]


def splits_from_config(
    holdout, n_times: int, key: str = "evaluate.holdout", where: str = "the data"
) -> list[list[int]]:
    """'loo' -> [[1], [2], ..., [K-2]] (every interior point); [1, 3] -> [[1, 3]];
    [[1], [1, 3]] -> as given. Indices refer to the sorted snapshot times.

    ConfigError naming `key` when a split has nothing to predict ('loo' with fewer than 3
    snapshots), an index outside the `n_times` snapshots of `where`, or leaves fewer than 2
    snapshots to fit."""
    if holdout == "loo" or holdout is None:
        splits = [[k] for k in range(1, n_times - 1)]
        if not splits:
            raise ConfigError(
                key,
                f"'loo' holds out each interior snapshot: {where} has {n_times} snapshots, nothing to predict (it needs at least 3)",
            )
        return splits
    if not isinstance(holdout, list) or not holdout:
        raise ConfigError(key, f"expected 'loo', a list of snapshot indices, or a list of such lists; got {holdout!r}")
    splits = [holdout] if all(isinstance(h, int) for h in holdout) else holdout
    for s in splits:
        if not isinstance(s, list) or not s or not all(isinstance(h, int) for h in s):
            raise ConfigError(key, f"each split must be a non-empty list of snapshot indices, got {s!r}")
        bad = [h for h in s if not 0 <= h < n_times]
        if bad:
            raise ConfigError(
                key, f"indices {bad} out of range: {where} has {n_times} snapshots (indices 0..{n_times - 1})"
            )
        if n_times - len(set(s)) < 2:
            raise ConfigError(key, f"split {s} leaves fewer than 2 snapshots to fit ({where} has {n_times})")
    return [sorted(set(s)) for s in splits]
