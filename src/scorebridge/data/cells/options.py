"""Typed options of one snapshot time course (an entry of `cells:`; defaults in
cells.schema.yaml)."""

from __future__ import annotations

import dataclasses
from typing import Mapping

from ...options import build, register
from ..entry import entry_options

__all__ = ["CellsOptions", "PreprocessOptions", "SimulateOptions", "cells_options", "simulate_options"]


@register
@dataclasses.dataclass(frozen=True)
class PreprocessOptions:
    """Expression preprocessing of an h5ad input without `obsm_key` (`preprocess:`)."""

    SCHEMA_PATH = ("cells", "*", "preprocess")

    normalize_total: bool
    target_sum: float
    log1p: bool
    n_top_genes: int | None
    hvg_bins: int
    n_pcs: int | None
    standardize: bool
    seed: int
    pca_solver: str
    block_mb: float


@register
@dataclasses.dataclass(frozen=True)
class SimulateOptions:
    """The simulate source (`simulate:`); `params` and `initial` ({mean, std}) stay
    mappings, and null times, sigma and initial values mean the system's defaults."""

    SCHEMA_PATH = ("cells", "*", "simulate")

    system: str
    n_cells: int | list[int]
    times: list[float] | None
    dt: float
    sigma: float | None
    seed: int
    params: dict
    initial: dict


@register
@dataclasses.dataclass(frozen=True)
class CellsOptions:
    """One snapshot time course."""

    SCHEMA_PATH = ("cells", "*")

    source: str
    path: str | None
    time_key: str
    time_map: dict | None
    times: list[float] | None
    features: list[str] | None
    min_cells: int
    obsm_key: str | None
    layer: str | None
    n_components: int | None
    preprocess: PreprocessOptions
    simulate: SimulateOptions

    @classmethod
    def from_section(cls, section: dict) -> "CellsOptions":
        kw = {f.name: section[f.name] for f in dataclasses.fields(cls)}
        kw["preprocess"] = build(PreprocessOptions, section["preprocess"])
        kw["simulate"] = build(SimulateOptions, section["simulate"])
        return cls(**kw)


def cells_options(spec: CellsOptions | Mapping) -> CellsOptions:
    """The options of a cells entry (a dict is validated and filled by the schema)."""
    return entry_options(CellsOptions, spec)


def simulate_options(sim: SimulateOptions | Mapping) -> SimulateOptions:
    """The options of a `simulate` block (a dict is validated and filled by the schema;
    errors name `simulate.<key>`)."""
    if isinstance(sim, SimulateOptions):
        return sim
    return build(SimulateOptions, dict(sim), where="simulate")
