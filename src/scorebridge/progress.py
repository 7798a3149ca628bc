"""Progress bars on long work: one switch for the whole package.

Bars show unless the environment sets `SCOREBRIDGE_NO_PROGRESS` to 1/true/yes. The
config key `progress: false` sets that variable for every job the workflow runs (the
Snakefile exports it), and the tests set it to keep their output quiet.
"""

from __future__ import annotations

import os
from typing import Any, Iterable

__all__ = ["progress_enabled", "progress"]

ENV = "SCOREBRIDGE_NO_PROGRESS"


def progress_enabled() -> bool:
    """True unless `SCOREBRIDGE_NO_PROGRESS` is 1, true or yes."""
    return os.environ.get(ENV, "").strip().lower() not in ("1", "true", "yes")


def progress(iterable: Iterable | None = None, **kw: Any):
    """A tqdm bar (disabled when progress is off); `leave=False` unless given."""
    from tqdm.auto import tqdm

    kw.setdefault("leave", False)
    kw.setdefault("disable", not progress_enabled())
    return tqdm(iterable, **kw)
