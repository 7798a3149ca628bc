"""Typed options of one ERA5 dataset (an entry of `era5:`; defaults in era5.schema.yaml)."""

from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np
import pandas as pd

from ...options import build, register
from ..entry import entry_options

__all__ = ["Era5Options", "StreamOptions", "SyntheticOptions", "era5_options"]


@register
@dataclasses.dataclass(frozen=True)
class StreamOptions:
    """How the ingestion streams through dask (`stream:`)."""

    SCHEMA_PATH = ("era5", "*", "stream")

    block_mb: float
    workers: int | None
    address: str | None


@register
@dataclasses.dataclass(frozen=True)
class SyntheticOptions:
    """The synthetic source (`synthetic:`): output grid, time axis and turbulence."""

    SCHEMA_PATH = ("era5", "*", "synthetic")

    nlat: int
    nlon: int
    ntime: int
    start: str
    step_hours: int
    lat0: float
    lon0: float
    resolution: float
    seed: int
    eddy_wind: float
    turnover_hours: float
    dynamics: str

    @property
    def latitude(self) -> np.ndarray:
        """Descending, as the CDS writes it."""
        return (self.lat0 + self.resolution * np.arange(self.nlat))[::-1].astype(np.float64)

    @property
    def longitude(self) -> np.ndarray:
        return self.lon0 + self.resolution * np.arange(self.nlon, dtype=np.float64)

    @property
    def times(self) -> pd.DatetimeIndex:
        return pd.date_range(self.start, periods=self.ntime, freq=f"{self.step_hours}h")


@register
@dataclasses.dataclass(frozen=True)
class Era5Options:
    """One ERA5 dataset; `dates` ({start, end}) and `chunks` ({time}) stay mappings."""

    SCHEMA_PATH = ("era5", "*")

    source: str
    variables: list[str]
    levels: list[float]
    area: list[float] | None
    dates: dict
    hours: list[int] | None
    grid: float | None
    files: list[str]
    product: str
    product_type: str
    arco_url: str
    member: int | None
    on_conflict: str
    nan: str
    chunks: dict
    stream: StreamOptions
    synthetic: SyntheticOptions

    @classmethod
    def from_section(cls, section: dict) -> "Era5Options":
        kw = {f.name: section[f.name] for f in dataclasses.fields(cls)}
        kw["stream"] = build(StreamOptions, section["stream"])
        kw["synthetic"] = build(SyntheticOptions, section["synthetic"])
        return cls(**kw)


def era5_options(spec: Era5Options | Mapping) -> Era5Options:
    """The options of an ERA5 entry (a dict is validated and filled by the schema)."""
    return entry_options(Era5Options, spec)
