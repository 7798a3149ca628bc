"""From data to observations: the coarse field and the collocated radiosondes.

Each :class:`~scorebridge.sr.operators.Observation` built here carries its modality's
noise ``sigma_y``, SDA ``gamma`` and DPS ``zeta`` from the options
(`sr.<name>.sample.coarse` / `.radiosondes`); calibration replaces ``gamma`` in those
options (:meth:`SampleOptions.with_gamma <scorebridge.sr.options.SampleOptions.with_gamma>`).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import InputError
from .operators import CoarseGrain, Observation, PointObs
from .options import CoarseOptions, RadiosondeOptions
from .point_obs import build_point_obs

log = logging.getLogger(__name__)

__all__ = [
    "MODALITIES",
    "SURFACE_VARIABLES",
    "sigma_for",
    "coarse_observation",
    "ObsTable",
    "read_obs",
    "choose_withheld",
    "radiosonde_observation",
]

MODALITIES = ("coarse", "radiosondes")

# what a sounding's surface record observes: its t, u, v are the single-level ERA5 fields
SURFACE_VARIABLES = {"t": "t2m", "u": "u10", "v": "v10"}

_TABLE_FIELDS = ("station", "time", "latitude", "longitude", "pressure", "variable", "value")


def sigma_for(var: str, std: float, opts: CoarseOptions | RadiosondeOptions) -> float:
    """Observation noise of ``var`` in physical units: ``sigma_y[var]`` or ``sigma_y_relative * std``."""
    if var in opts.sigma_y:
        return float(opts.sigma_y[var])
    return float(opts.sigma_y_relative) * float(std)


def coarse_observation(truth: torch.Tensor, channels, std: np.ndarray, opts: CoarseOptions) -> Observation:
    """The coarse field ``y = A_k x_truth`` of fields ``truth[T, C, H, W]`` (physical) as an Observation."""
    H, W = truth.shape[-2:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # warned once by the caller
        op = CoarseGrain(int(opts.factor), (H, W), pad=opts.pad)
    y = op(truth)
    sig = torch.tensor([sigma_for(v, s, opts) for (v, _), s in zip(channels, std)], dtype=torch.float32).reshape(
        1, -1, 1, 1
    )
    return Observation("coarse", op, y, sig, float(opts.gamma), float(opts.zeta))


@dataclass
class ObsTable:
    """Collocated soundings in long form: one row per (level, variable) value."""

    station: np.ndarray
    time: np.ndarray  # datetime64[ns]
    latitude: np.ndarray
    longitude: np.ndarray
    pressure: np.ndarray  # Pa
    variable: np.ndarray  # str
    value: np.ndarray
    path: str = ""

    def select(self, keep: np.ndarray) -> "ObsTable":
        return ObsTable(*(getattr(self, f)[keep] for f in _TABLE_FIELDS), path=self.path)

    @classmethod
    def concat(cls, tables: Sequence["ObsTable"]) -> "ObsTable":
        return cls(*(np.concatenate([getattr(t, f) for t in tables]) for f in _TABLE_FIELDS))


def read_obs(path: str | Path, variables: Sequence[str]) -> ObsTable:
    """Read the collocated obs zarr (data contract) into long form for the prior's ``variables``.

    Upper-air levels give the pressure-level variables (t, u, v, z); a sounding's surface
    record (``surface``, IGRA ``LVLTYP2 = 1``) gives the single-level ones instead
    (:data:`SURFACE_VARIABLES`: t -> t2m, u -> u10, v -> v10, pressure NaN) when the prior
    models them, and nothing otherwise.
    """
    from ..io import open_store

    path = Path(path)
    ds = open_store(path, "collocated observations")
    need = ["station", "time", "latitude", "longitude", "pressure"]
    missing = [n for n in need if n not in ds.variables]
    if missing:
        raise InputError(f"missing {missing} (collocated observations data contract)", path)
    base = {n: np.asarray(ds[n].values) for n in need}
    base["station"] = np.array([str(x) for x in base["station"]], dtype=object)
    surface = (
        np.asarray(ds["surface"].values, bool) if "surface" in ds.variables else np.zeros(len(base["pressure"]), bool)
    )
    wanted = set(variables)
    cols = {f: [] for f in _TABLE_FIELDS}
    for column in [c for c in ("t", "u", "v", "z") if c in ds.variables and ds[c].dims == ds["station"].dims] + [
        v for v in variables if v not in ("t", "u", "v", "z") and v in ds.variables and ds[v].dims == ds["station"].dims
    ]:
        vals = np.asarray(ds[column].values, dtype=np.float64)
        for name, rows in ((column, ~surface), (SURFACE_VARIABLES.get(column), surface)):
            if name is None or name not in wanted or not rows.any():
                continue
            for n in need:
                cols[n].append(base[n][rows] if n != "pressure" or name == column else np.full(int(rows.sum()), np.nan))
            cols["variable"].append(np.full(int(rows.sum()), name))
            cols["value"].append(vals[rows])
    if not cols["value"]:
        empty = {f: np.zeros(0) for f in cols}
        empty["time"] = np.zeros(0, dtype="datetime64[ns]")
        empty["station"] = empty["variable"] = np.zeros(0, dtype=str)
        return ObsTable(**empty, path=str(path))
    out = {f: np.concatenate(c) for f, c in cols.items()}
    out["station"] = np.array([str(x) for x in out["station"]])  # object / numpy StringDType -> str
    out["time"] = out["time"].astype("datetime64[ns]")
    return ObsTable(**out, path=str(path))


def choose_withheld(stations: Sequence[str], opts: RadiosondeOptions, seed: int) -> list[str]:
    """Stations hidden from conditioning: ``withheld_stations`` if given, else a seeded
    random ``withheld_fraction`` of them (at least one when there are two or more)."""
    stations = sorted(set(map(str, stations)))
    explicit = [str(s) for s in opts.withheld_stations]
    if explicit:
        unknown = [s for s in explicit if s not in stations]
        if unknown:
            warnings.warn(f"withheld station(s) {unknown} have no collocated observations", stacklevel=2)
        return sorted(s for s in explicit if s in stations)
    frac = float(opts.withheld_fraction)
    if frac <= 0 or len(stations) < 2:
        return []
    n = min(len(stations) - 1, max(1, int(round(frac * len(stations)))))
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(stations, size=n, replace=False).tolist())


def radiosonde_observation(
    table: ObsTable,
    times: np.ndarray,
    channels,
    lat: np.ndarray,
    lon: np.ndarray,
    std: np.ndarray,
    opts: RadiosondeOptions,
) -> tuple[Observation, dict]:
    """Per-time point operators (stacked, batch = len(times)) for the soundings in ``table``."""
    ops, ys, sigs = [], [], []
    reports = []
    n_empty_times = 0
    all_missing = 0
    for t in np.asarray(times).astype("datetime64[ns]"):
        sub = table.select(table.time == t)
        # soundings (station, time) with no finite value at all: documented to contribute nothing
        for st in np.unique(sub.station):
            if not np.isfinite(sub.value[sub.station == st]).any():
                all_missing += 1
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            op, y, kept, rep = build_point_obs(
                channels,
                lat,
                lon,
                sub.latitude,
                sub.longitude,
                sub.pressure,
                sub.variable,
                sub.value,
                sub.station,
                outside=opts.outside,
                source=table.path,
            )
        for w in caught:
            log.warning("%s: %s", np.datetime_as_string(t, "m"), w.message)
        if rep.n_used == 0:
            n_empty_times += 1
        sig = np.array(
            [sigma_for(v, 1.0, opts) if v in opts.sigma_y else np.nan for v in sub.variable[kept]], dtype=np.float64
        )
        ops.append(op)
        ys.append(y)
        sigs.append(sig)
        reports.append(rep.as_dict())
    stacked = PointObs.stack(ops)
    T, M = stacked.valid.shape
    y = torch.full((T, M), float("nan"))
    sig = torch.ones(T, M)
    for b, (yy, ss) in enumerate(zip(ys, sigs)):
        m = yy.shape[1]
        y[b, :m] = yy[0]
        sig[b, :m] = torch.as_tensor(ss, dtype=torch.float32)
    info = {
        "n_used": int(sum(r["n_used"] for r in reports)),
        "n_missing": int(sum(r["n_missing"] for r in reports)),
        "n_outside_horizontal": int(sum(r["n_outside_horizontal"] for r in reports)),
        "n_outside_vertical": int(sum(r["n_outside_vertical"] for r in reports)),
        "n_all_missing_soundings": int(all_missing),
        "n_times_without_obs": int(n_empty_times),
    }
    ob = Observation("radiosondes", stacked, y, sig, float(opts.gamma), float(opts.zeta))
    _fill_relative_sigma(ob, std, opts)
    return ob, info


def _fill_relative_sigma(ob: Observation, std: np.ndarray, opts: RadiosondeOptions) -> None:
    """Radiosonde values whose variable has no ``sigma_y`` entry: ``sigma_y_relative`` times the
    operator applied to the channel std (NaN placeholders set by :func:`radiosonde_observation`)."""
    C = len(std)
    op = ob.operator
    field = torch.as_tensor(np.asarray(std, np.float32)).reshape(1, C, 1, 1).expand(1, C, *op.field_shape[1:])
    scale = op(field)
    bad = ~torch.isfinite(ob.sigma_y)
    ob.sigma_y[bad] = (float(opts.sigma_y_relative) * scale.expand_as(ob.sigma_y))[bad]
