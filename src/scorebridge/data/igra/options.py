"""Typed options of one IGRA v2 dataset (an entry of `igra:`; defaults in igra.schema.yaml)."""

from __future__ import annotations

import dataclasses
from typing import Mapping

from ...options import build, register
from ..entry import entry_options

__all__ = [
    "IgraOptions",
    "HttpOptions",
    "SoundingsOptions",
    "CollocateOptions",
    "igra_options",
    "soundings_options",
    "collocate_options",
]


@register
@dataclasses.dataclass(frozen=True)
class HttpOptions:
    """Download behaviour of the http source (`http:`)."""

    SCHEMA_PATH = ("igra", "*", "http")

    retries: int
    timeout_s: float
    backoff_s: float


@register
@dataclasses.dataclass(frozen=True)
class SoundingsOptions:
    """The synthetic source (`synthetic:`): soundings sampled from an ERA5 dataset."""

    SCHEMA_PATH = ("igra", "*", "synthetic")

    era5: str
    n_stations: int
    noise_k: float
    noise_wind_ms: float
    missing_fraction: float
    extra_levels: int
    hours: list[int] | None
    seed: int


@register
@dataclasses.dataclass(frozen=True)
class CollocateOptions:
    """Collocation with an ERA5 grid (`collocate:`)."""

    SCHEMA_PATH = ("igra", "*", "collocate")

    era5: str | None
    tolerance_hours: float


@register
@dataclasses.dataclass(frozen=True)
class IgraOptions:
    """One IGRA dataset; `dates` ({start, end}) stays a mapping."""

    SCHEMA_PATH = ("igra", "*")

    source: str
    product: str | None
    stations: list[str]
    area: list[float] | None
    years: list[int] | None
    dates: dict
    pressure_range: list[float] | None
    files: list[str]
    station_list: str | None
    base_url: str
    http: HttpOptions
    synthetic: SoundingsOptions
    collocate: CollocateOptions

    @classmethod
    def from_section(cls, section: dict) -> "IgraOptions":
        kw = {f.name: section[f.name] for f in dataclasses.fields(cls)}
        kw["http"] = build(HttpOptions, section["http"])
        kw["synthetic"] = build(SoundingsOptions, section["synthetic"])
        kw["collocate"] = build(CollocateOptions, section["collocate"])
        return cls(**kw)


def igra_options(spec: IgraOptions | Mapping) -> IgraOptions:
    """The options of an IGRA entry (a dict is validated and filled by the schema)."""
    return entry_options(IgraOptions, spec)


def soundings_options(syn: SoundingsOptions | Mapping) -> SoundingsOptions:
    """The options of a `synthetic` block (a dict is validated and filled by the schema;
    errors name `synthetic.<key>`)."""
    if isinstance(syn, SoundingsOptions):
        return syn
    return build(SoundingsOptions, dict(syn), where="synthetic")


def collocate_options(section: CollocateOptions | Mapping) -> CollocateOptions:
    """The options of a `collocate` block (errors name `collocate.<key>`)."""
    if isinstance(section, CollocateOptions):
        return section
    return build(CollocateOptions, dict(section), where="collocate")
