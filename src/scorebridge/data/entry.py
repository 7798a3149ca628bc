"""Typed options of one config entry (`era5.<name>`, `igra.<name>`, `cells.<name>`).

`entry_options(Options, spec)` validates a dataset's entry against its part of the
schema, which fills the defaults, and builds `Options` with `scorebridge.options.build`.
Errors name the key inside the entry (`config key 'dates.start'`), as the data commands
receive one entry (`--spec`) without the name it has in the config.
"""

from __future__ import annotations

import copy
from typing import Mapping, TypeVar

__all__ = ["entry_options"]

T = TypeVar("T")


def entry_options(cls: type[T], spec: T | Mapping) -> T:
    """`spec` itself when it is already a `cls`; else the entry validated against
    `cls.SCHEMA_PATH` (defaults filled from the schema) and built into `cls`."""
    if isinstance(spec, cls):
        return spec
    from ..config import validate_config
    from ..options import build, schema_node

    section = validate_config(copy.deepcopy(dict(spec)), schema_node(cls.SCHEMA_PATH))
    return build(cls, section)
