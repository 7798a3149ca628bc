"""Zero-shot posterior sampling of super-resolved fields: EDM Heun sampler + likelihood guidance.

The sampler is Karras et al. (2022) Algorithm 2 (Heun's 2nd-order method on the
probability-flow ODE ``dx/ds = (x - D(x; s)) / s``, with optional stochastic churn),
with the prior denoiser replaced by the guided one of :mod:`scorebridge.sr.guidance`.
``steps`` noise levels cost ``2 * steps - 1`` network evaluations per sample (the last
step is an Euler step to ``s = 0``); SDA guidance adds one backward pass per
evaluation, DPS one per step.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import ConfigError, InputError
from .guidance import Cost, Denoiser, GuidedDenoiser
from .operators import CoarseGrain, Observation, PointObs, build_point_obs, coarse_coords, coarse_grain

log = logging.getLogger(__name__)

__all__ = ["karras_sigmas", "posterior_sample", "sample_cli"]


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """``steps`` noise levels from ``sigma_max`` down to ``sigma_min``, then 0 (Karras eq. 5)."""
    try:
        from .edm import edm_sigmas  # the prior's schedule, when available

        s = torch.as_tensor(edm_sigmas(steps, sigma_min, sigma_max, rho), dtype=torch.float64).flatten()
    except ImportError:
        i = torch.arange(steps, dtype=torch.float64)
        s = (sigma_max ** (1 / rho) + i / max(steps - 1, 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    if s[-1] != 0:
        s = torch.cat([s, s.new_zeros(1)])
    return s


def posterior_sample(
    prior: Denoiser,
    observations: Sequence[Observation],
    n_members: int,
    steps: int = 25,
    *,
    shape: Sequence[int],
    mean: torch.Tensor,
    std: torch.Tensor,
    n_cases: int | None = None,
    guidance: str = "sda",
    churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
    rho: float = 7.0,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> tuple[torch.Tensor, Cost]:
    """Draw ``n_members`` posterior samples for each of ``n_cases`` observation sets.

    Parameters
    ----------
    prior : object with ``denoise(x[B, C, H, W], sigma[B])`` on normalised fields (and
        optionally ``sigma_min``/``sigma_max`` attributes).
    observations : modalities whose ``y`` has batch ``n_cases`` (or 1 = shared).
    shape : ``(C, H, W)`` of one field; ``mean``/``std``: per-channel ``[C]`` normalisation.
    guidance : ``"sda"``, ``"dps"`` or ``"none"`` (unconditional prior samples).
    churn : Karras ``S_churn`` (0 = deterministic ODE sampler).

    Returns
    -------
    ``x[n_cases, n_members, C, H, W]`` in physical units, and the per-sample :class:`Cost`.
    """
    device = torch.device(device or "cpu")
    if n_cases is None:
        n_cases = max([ob.y.shape[0] for ob in observations], default=1)
    obs = [ob.to(device).repeat_interleave(n_members) for ob in observations]
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=device)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=device)
    den = GuidedDenoiser(prior, obs, mean_t, std_t, mode=guidance)
    smin = float(sigma_min if sigma_min is not None else getattr(prior, "sigma_min", 0.002))
    smax = float(sigma_max if sigma_max is not None else getattr(prior, "sigma_max", 80.0))
    sig = karras_sigmas(steps, smin, smax, rho).tolist()
    B = n_cases * n_members
    C, H, W = shape
    gen = generator
    noise = lambda: torch.randn(B, C, H, W, generator=gen, device="cpu").to(device)  # noqa: E731 (CPU generator: same draws on any device)
    start = time.perf_counter()
    x = noise() * sig[0]
    it = range(len(sig) - 1)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="posterior sampling", leave=False)
    for i in it:
        s_cur, s_next = sig[i], sig[i + 1]
        gamma = min(churn / steps, math.sqrt(2.0) - 1.0) if (churn > 0 and s_tmin <= s_cur <= s_tmax) else 0.0
        s_hat = s_cur * (1.0 + gamma)
        if gamma > 0:
            x = x + math.sqrt(s_hat**2 - s_cur**2) * s_noise * noise()
        sv = torch.full((B,), s_hat, device=device)
        d_cur = (x - den(x, sv)) / s_hat
        dps_grad = den.last_dps_grad if guidance == "dps" else None
        x_next = x + (s_next - s_hat) * d_cur
        if s_next > 0:
            sv2 = torch.full((B,), s_next, device=device)
            d_next = (x_next - den(x_next, sv2, guide=(guidance == "sda"))) / s_next
            x_next = x + (s_next - s_hat) * 0.5 * (d_cur + d_next)
        if dps_grad is not None:
            x_next = x_next - dps_grad  # zeta * grad ||r|| (Chung et al. 2023, Alg. 1)
        x = x_next
    out = (mean_t.reshape(1, -1, 1, 1) + std_t.reshape(1, -1, 1, 1) * x).reshape(n_cases, n_members, C, H, W)
    den.cost.seconds = (time.perf_counter() - start) / max(B, 1)
    return out.detach(), den.cost


# ---------------------------------------------------------------------------------------
# From data to observations.

MODALITIES = ("coarse", "radiosondes")


def _sigma_for(var: str, std: float, cfg: dict) -> float:
    """Observation noise of ``var`` in physical units: ``sigma_y[var]`` or ``sigma_y_relative * std``."""
    table = cfg.get("sigma_y") or {}
    if var in table:
        return float(table[var])
    return float(cfg.get("sigma_y_relative", 0.05)) * float(std)


def coarse_observation(truth: torch.Tensor, channels, std: np.ndarray, cfg: dict, gamma: float | None = None) -> Observation:
    """The coarse field ``y = A_k x_truth`` of fields ``truth[T, C, H, W]`` (physical) as an Observation."""
    k = int(cfg.get("factor", 4))
    H, W = truth.shape[-2:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # warned once by the caller
        op = CoarseGrain(k, (H, W), pad=cfg.get("pad", "edge"))
    y = op(truth)
    sig = torch.tensor([_sigma_for(v, s, cfg) for (v, _), s in zip(channels, std)], dtype=torch.float32).reshape(1, -1, 1, 1)
    return Observation("coarse", op, y, sig, float(cfg.get("gamma", 0.1) if gamma is None else gamma), float(cfg.get("zeta", 1.0)))


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
        return ObsTable(*(getattr(self, f)[keep] for f in ("station", "time", "latitude", "longitude", "pressure", "variable", "value")), path=self.path)


def read_obs(path: str | Path, variables: Sequence[str]) -> ObsTable:
    """Read the collocated obs zarr (data contract) into long form for the prior's ``variables``."""
    from ..io import open_store

    path = Path(path)
    ds = open_store(path, "collocated observations")
    need = ["station", "time", "latitude", "longitude", "pressure"]
    missing = [n for n in need if n not in ds.variables]
    if missing:
        raise InputError(f"missing {missing} (collocated observations data contract)", path)
    base = {n: np.asarray(ds[n].values) for n in need}
    base["station"] = np.array([str(x) for x in base["station"]], dtype=object)
    present = [v for v in variables if v in ds.variables and ds[v].dims == ds["station"].dims]
    cols = {f: [] for f in ("station", "time", "latitude", "longitude", "pressure", "variable", "value")}
    for v in present:
        vals = np.asarray(ds[v].values, dtype=np.float64)
        for n in need:
            cols[n].append(base[n])
        cols["variable"].append(np.full(len(vals), v))
        cols["value"].append(vals)
    if not present:
        empty = {f: np.zeros(0) for f in cols}
        empty["time"] = np.zeros(0, dtype="datetime64[ns]")
        empty["station"] = empty["variable"] = np.zeros(0, dtype=str)
        return ObsTable(**empty, path=str(path))
    out = {f: np.concatenate(c) for f, c in cols.items()}
    out["station"] = np.array([str(x) for x in out["station"]])  # object / numpy StringDType -> str
    out["time"] = out["time"].astype("datetime64[ns]")
    return ObsTable(**out, path=str(path))


def choose_withheld(stations: Sequence[str], cfg: dict, seed: int) -> list[str]:
    """Stations hidden from conditioning: ``withheld_stations`` if given, else a seeded
    random ``withheld_fraction`` of them (at least one when there are two or more)."""
    stations = sorted(set(map(str, stations)))
    explicit = [str(s) for s in (cfg.get("withheld_stations") or [])]
    if explicit:
        unknown = [s for s in explicit if s not in stations]
        if unknown:
            warnings.warn(f"withheld station(s) {unknown} have no collocated observations", stacklevel=2)
        return sorted(s for s in explicit if s in stations)
    frac = float(cfg.get("withheld_fraction", 0.25))
    if frac <= 0 or len(stations) < 2:
        return []
    n = min(len(stations) - 1, max(1, int(round(frac * len(stations)))))
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(stations, size=n, replace=False).tolist())


def radiosonde_observation(table: ObsTable, times: np.ndarray, channels, lat: np.ndarray, lon: np.ndarray, std: np.ndarray, cfg: dict, gamma: float | None = None) -> tuple[Observation, dict]:
    """Per-time point operators (stacked, batch = len(times)) for the soundings in ``table``."""
    ops, ys, sigs = [], [], []
    reports = []
    n_empty_times = 0
    all_missing = 0
    H, W = len(lat), len(lon)
    for t in np.asarray(times).astype("datetime64[ns]"):
        sel = table.time == t
        sub = table.select(sel)
        # soundings (station, time) with no finite value at all: documented to contribute nothing
        for st in np.unique(sub.station):
            if not np.isfinite(sub.value[sub.station == st]).any():
                all_missing += 1
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            op, y, kept, rep = build_point_obs(channels, lat, lon, sub.latitude, sub.longitude, sub.pressure, sub.variable, sub.value, sub.station, outside=cfg.get("outside", "drop"), source=table.path)
        for w in caught:
            log.warning("%s: %s", np.datetime_as_string(t, "m"), w.message)
        if rep.n_used == 0:
            n_empty_times += 1
        sig = np.array([_sigma_for(v, 1.0, cfg) if v in (cfg.get("sigma_y") or {}) else np.nan for v in sub.variable[kept]], dtype=np.float64)
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
    ob = Observation("radiosondes", stacked, y, sig, float(cfg.get("gamma", 0.1) if gamma is None else gamma), float(cfg.get("zeta", 1.0)))
    _fill_relative_sigma(ob, std, cfg)
    return ob, info


def _fill_relative_sigma(ob: Observation, std: np.ndarray, cfg: dict) -> None:
    """Radiosonde values whose variable has no ``sigma_y`` entry: ``sigma_y_relative`` times the
    operator applied to the channel std (NaN placeholders set by :func:`radiosonde_observation`)."""
    C = len(std)
    op = ob.operator
    field = torch.as_tensor(np.asarray(std, np.float32)).reshape(1, C, 1, 1).expand(1, C, *op.field_shape[1:])
    scale = op(field)
    rel = float(cfg.get("sigma_y_relative", 0.05))
    bad = ~torch.isfinite(ob.sigma_y)
    ob.sigma_y[bad] = (rel * scale.expand_as(ob.sigma_y))[bad]


# ---------------------------------------------------------------------------------------
# Sampling held-out times, calibration, the samples store.


@dataclass
class Conditioner:
    """Builds the truth and the observation sets of given ERA5 time indices."""

    ds: object
    channels: list
    mean: np.ndarray
    std: np.ndarray
    cfg: dict  # the experiment's `sample` section
    table: ObsTable | None = None  # conditioning stations only

    @property
    def lat(self) -> np.ndarray:
        return np.asarray(self.ds["latitude"].values, dtype=np.float64)

    @property
    def lon(self) -> np.ndarray:
        return np.asarray(self.ds["longitude"].values, dtype=np.float64)

    def truth(self, idx: np.ndarray) -> np.ndarray:
        """Physical fields ``[T, C, H, W]`` (member 0 of an ensemble store)."""
        from .data import load_fields

        arr = load_fields(self.ds, self.channels, idx, member=0 if "number" in self.ds.dims else None, check_nan=False)
        return arr

    def observations(self, idx: np.ndarray, truth: np.ndarray, conditioning: Sequence[str], gamma: float | None = None) -> tuple[list[Observation], dict]:
        obs: list[Observation] = []
        info: dict = {}
        if "coarse" in conditioning:
            obs.append(coarse_observation(torch.as_tensor(truth), self.channels, self.std, self.cfg["coarse"], gamma))
        if "radiosondes" in conditioning:
            if self.table is None:
                raise ConfigError("sr.sample.conditioning", "'radiosondes' needs collocated observations (set the experiment's `igra` and pass --obs)")
            times = np.asarray(self.ds["time"].values)[idx]
            ob, info = radiosonde_observation(self.table, times, self.channels, self.lat, self.lon, self.std, self.cfg["radiosondes"], gamma)
            obs.append(ob)
        return obs, info


def _sampler_kwargs(cfg: dict) -> dict:
    return {
        "guidance": cfg.get("guidance", "sda"),
        "churn": float(cfg.get("churn", 0.0)),
        "s_tmin": float(cfg.get("s_tmin", 0.0)),
        "s_tmax": float(cfg.get("s_tmax") if cfg.get("s_tmax") is not None else float("inf")),
        "s_noise": float(cfg.get("s_noise", 1.0)),
        "rho": float(cfg.get("rho", 7.0)),
    }


def sample_times(prior, cond: Conditioner, idx: np.ndarray, truth: np.ndarray, conditioning: Sequence[str], members: int, *, seed: int, device, gamma: float | None = None, progress: bool = False) -> tuple[np.ndarray, Cost, dict]:
    """Ensembles ``[T, N, C, H, W]`` (physical) for ERA5 times ``idx``, in chunks of ``batch_size`` fields."""
    cfg = cond.cfg
    C, H, W = truth.shape[1:]
    per = max(1, int(cfg.get("batch_size", 64)) // members)
    out = np.empty((len(idx), members, C, H, W), np.float32)
    total = Cost()
    info_all: dict = {}
    gen = torch.Generator().manual_seed(int(seed))
    chunks = range(0, len(idx), per)
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc=f"sampling {'+'.join(conditioning) or 'prior'}", leave=False)
    for a in chunks:
        sl = slice(a, a + per)
        obs, info = cond.observations(idx[sl], truth[sl], conditioning, gamma)
        for k, v in info.items():
            info_all[k] = info_all.get(k, 0) + v
        x, cost = posterior_sample(
            prior, obs, members, int(cfg.get("steps", 25)), shape=(C, H, W), mean=torch.as_tensor(cond.mean), std=torch.as_tensor(cond.std),
            n_cases=len(idx[sl]), generator=gen, device=device, **_sampler_kwargs(cfg),
        )
        out[sl] = x.cpu().numpy()
        total.forward, total.backward = cost.forward, cost.backward
        total.seconds += cost.seconds * x.shape[0] * x.shape[1]
    total.seconds /= max(1, len(idx) * members)
    return out, total, info_all


def inflate(ens: np.ndarray, factor) -> np.ndarray:
    """Multiplicative inflation of the anomalies about the ensemble mean (axis 1) of
    ``ens[T, N, C, H, W]``; ``factor`` a number or one per channel ``[C]``."""
    m = ens.mean(axis=1, keepdims=True)
    f = np.asarray(factor, dtype=np.float64)
    if f.ndim == 1:
        f = f.reshape(1, 1, -1, 1, 1)
    return (m + f * (ens - m)).astype(ens.dtype)


def _pooled_scores(ens: np.ndarray, truth: np.ndarray, std: np.ndarray, lat: np.ndarray) -> dict:
    from . import metrics

    s = std.reshape(1, 1, -1, 1, 1)
    e, t = ens / s, truth / s[0]
    n = ens.shape[1]
    sp2 = float(np.mean(metrics.spread(e, lat) ** 2))
    mse = float(np.mean(metrics.rmse(e.mean(1), t, lat) ** 2))
    return {"ssr": float(np.sqrt((n + 1) / n * sp2 / mse)) if mse > 0 else float("nan"), "rmse": float(np.sqrt(mse)), "crps": float(np.mean(metrics.fair_crps(e, t, lat)))}


def calibrate(prior, cond: Conditioner, train_idx: np.ndarray, conditioning: Sequence[str], *, seed: int, device, progress: bool = False) -> dict:
    """Pick the SDA ``gamma`` and an anomaly-inflation factor on calibration times ``train_idx``
    (the validation block of the training period, or training times when there is none).

    For each candidate ``gamma`` (shared by the conditioning modalities) sample the
    calibration times, compute the pooled spread-skill ratio ``ssr`` (normalised units,
    latitude-weighted, finite-ensemble corrected), set the inflation ``alpha = 1 / ssr``
    (clipped to ``inflation_range``; 1 when inflation is off), and score the fair CRPS of
    the inflated ensemble; the candidate with the lowest CRPS wins. Returns the choice and
    the whole table (recorded in the samples' attributes and in MLflow).
    """
    ccfg = cond.cfg.get("calibrate", {})
    n = min(int(ccfg.get("times", 4)), len(train_idx))
    pick = train_idx[np.unique(np.linspace(0, len(train_idx) - 1, n).round().astype(int))]
    truth = cond.truth(pick)
    members = int(ccfg.get("members") or cond.cfg.get("members", 8))
    lo, hi = ccfg.get("inflation_range", [0.25, 4.0])
    gammas = ccfg.get("gammas") or [None]
    table = []
    for g in gammas:
        ens, _, _ = sample_times(prior, cond, pick, truth, conditioning, members, seed=seed + 7919, device=device, gamma=g, progress=progress)
        with np.errstate(all="ignore"):
            raw = _pooled_scores(ens, truth, cond.std, cond.lat)
        ok = np.isfinite(raw["ssr"]) and raw["ssr"] > 0
        alpha: float | list = float(np.clip(1.0 / raw["ssr"], lo, hi)) if ccfg.get("inflation", True) and ok else 1.0
        if ccfg.get("per_channel", True) and ccfg.get("inflation", True) and ok:
            from . import metrics

            with np.errstate(all="ignore"):
                ssr_c = metrics.spread_skill(ens, truth, cond.lat)
            alpha = [float(np.clip(1.0 / r, lo, hi)) if np.isfinite(r) and r > 0 else 1.0 for r in ssr_c]
        with np.errstate(all="ignore"):
            cal = _pooled_scores(inflate(ens, alpha), truth, cond.std, cond.lat)
        row = {"gamma": g, "inflation": alpha, "ssr_raw": raw["ssr"], "ssr": cal["ssr"], "rmse": raw["rmse"], "crps_raw": raw["crps"], "crps": cal["crps"]}
        log.info("calibration: %s", row)
        table.append(row)
    def score(r):  # a diverged candidate (non-finite scores) never wins
        ok = np.isfinite(r["crps"]) and np.isfinite(r["ssr"]) and r["ssr"] > 0
        return (r["crps"], abs(np.log(r["ssr"]))) if ok else (np.inf, np.inf)

    best = min(table, key=score)
    if not np.isfinite(score(best)[0]):
        raise InputError(f"posterior sampling diverged for every calibration gamma {gammas}; raise sr.sample.calibrate.gammas or sigma_y")
    return {"times": [str(t) for t in np.asarray(cond.ds["time"].values)[pick].astype("datetime64[s]")], "members": members, "gamma": best["gamma"], "inflation": best["inflation"], "table": table}


def _channel_layout(channels) -> tuple[list[str], list[float]]:
    """Variables in channel order and the shared pressure levels (hPa) of the multi-level ones."""
    variables: list[str] = []
    levels_of: dict[str, list[float]] = {}
    for v, lv in channels:
        if v not in variables:
            variables.append(v)
        if lv is not None:
            levels_of.setdefault(v, []).append(float(lv))
    lvls = list(levels_of.values())
    if any(lv != lvls[0] for lv in lvls):
        raise InputError(f"variables have different level sets {levels_of}; the samples store needs one shared `level` axis")
    return variables, (lvls[0] if lvls else [])


def fields_to_vars(arr: np.ndarray, channels, lead_dims: Sequence[str], suffix: str = "", lat_dim: str = "latitude", lon_dim: str = "longitude") -> dict:
    """Split ``arr[..., C, H, W]`` by variable: ``{name: (dims, data)}`` for an ``xr.Dataset``."""
    out = {}
    variables, _ = _channel_layout(channels)
    for v in variables:
        cs = [c for c, (vv, _) in enumerate(channels) if vv == v]
        if channels[cs[0]][1] is None:
            out[v + suffix] = ((*lead_dims, lat_dim, lon_dim), arr[..., cs[0], :, :])
        else:
            out[v + suffix] = ((*lead_dims, "level", lat_dim, lon_dim), arr[..., cs, :, :])
    return out


def vars_to_fields(ds, channels, suffix: str = "", **isel) -> np.ndarray:
    """Inverse of :func:`fields_to_vars`: stack a store's variables into ``[..., C, H, W]``."""
    planes = []
    for v, lv in channels:
        da = ds[v + suffix]
        if isel:
            da = da.isel(**{k: i for k, i in isel.items() if k in da.dims})
        planes.append(np.asarray((da if lv is None else da.sel(level=lv)).values))
    return np.stack(planes, axis=-3)


def _sample_spec(spec: dict) -> dict:
    """The experiment entry with the schema's defaults filled in (`sample`, `evaluate`, ...)."""
    from ..config import SCHEMA, load_schema, validate_config

    return validate_config(spec, load_schema(SCHEMA.parent / "sr.schema.yaml"))


def _progress() -> bool:
    import os

    return os.environ.get("SCOREBRIDGE_NO_PROGRESS", "") not in ("1", "true", "yes")


def run_sampling(prior, ds, spec: dict, obs_path: str | None, *, device, out: str | Path, checkpoint: str | None = None, run=None) -> dict:
    """Sample the held-out times of one experiment and write ``samples.zarr`` to ``out``."""
    import xarray as xr

    from ..io import atomic_path
    from ..provenance import package_versions
    from .data import split_times

    cfg = spec["sample"]
    seed = int(spec.get("seed") or 0)
    channels = [(v, None if lv is None else float(lv)) for v, lv in prior.channels]
    missing = [f"{v}/{lv:g}" if lv is not None else v for v, lv in channels if v not in ds.data_vars or (lv is not None and ("level" not in ds[v].dims or not np.isclose(ds["level"].values, lv).any()))]
    if missing:
        raise InputError(f"the prior's channels {missing} are not in this ERA5 store: checkpoint {checkpoint} was trained on another configuration", ds.attrs.get("source_path"))
    mean = np.asarray(prior.normalisation.mean, np.float32)
    std = np.asarray(prior.normalisation.std, np.float32)
    conditioning = list(cfg.get("conditioning", ["coarse", "radiosondes"]))
    compare = cfg.get("compare")
    H, W = ds.sizes["latitude"], ds.sizes["longitude"]
    k = int(cfg["coarse"]["factor"])
    if "coarse" in conditioning or (compare and any("coarse" in c for c in compare)):
        CoarseGrain(k, (H, W), pad=cfg["coarse"].get("pad", "edge"))  # warns (pad) or raises (error)

    train_idx, val_idx, test_idx = split_times(ds, spec, validation=True)
    nmax = cfg.get("max_times")
    if nmax and len(test_idx) > nmax:
        test_idx = test_idx[np.unique(np.linspace(0, len(test_idx) - 1, int(nmax)).round().astype(int))]

    table = withheld = None
    radiosonde_wanted = "radiosondes" in conditioning or compare is None or any("radiosondes" in c for c in (compare or []))
    if obs_path and radiosonde_wanted:
        full = read_obs(obs_path, sorted({v for v, _ in channels}))
        withheld = choose_withheld(full.station, cfg["radiosondes"], seed)
        table = full.select(~np.isin(full.station, withheld))
        log.info("radiosondes: %d values from %d stations; withheld %s", len(full.value), len(set(full.station)), withheld)
    elif "radiosondes" in conditioning:
        raise ConfigError("sr.sample.conditioning", "'radiosondes' needs collocated observations: set the experiment's `igra` (the rule then passes --obs)")
    if compare is None:
        compare = [c for c in (["coarse"], ["coarse", "radiosondes"], ["radiosondes"]) if sorted(c) != sorted(conditioning)] if table is not None else []
        if "coarse" not in conditioning and "radiosondes" not in conditioning:
            compare = []
    cond = Conditioner(ds, channels, mean, std, cfg, table)
    progress = _progress()

    calib = None
    gamma = None
    inflation = 1.0
    if cfg["calibrate"].get("enabled", True) and conditioning:
        # calibrate on times the prior never saw when there are any (a prior that memorised its
        # training fields is over-confident there); else on training times
        cal_idx, cal_on = (val_idx, "validation") if len(val_idx) else (train_idx, "training")
        calib = calibrate(prior, cond, cal_idx, conditioning, seed=seed, device=device, progress=progress)
        calib["on"] = cal_on
        gamma, inflation = calib["gamma"], calib["inflation"]
        if run is not None:
            alphas = np.atleast_1d(np.asarray(inflation, dtype=np.float64))
            run.log_metrics({"calibration/gamma": gamma if gamma is not None else float("nan"), "calibration/inflation_mean": float(alphas.mean()),
                             **({f"calibration/inflation/{v if lv is None else f'{v}/{lv:g}'}": float(a) for (v, lv), a in zip(channels, alphas)} if len(alphas) == len(channels) else {})})

    truth = cond.truth(test_idx)
    members = int(cfg["members"])
    ens, cost, obs_info = sample_times(prior, cond, test_idx, truth, conditioning, members, seed=seed, device=device, gamma=gamma, progress=progress)
    raw_spread = float(np.mean(np.std(ens, axis=1, ddof=1) / std.reshape(1, -1, 1, 1)))
    ens = inflate(ens, inflation)
    mean_field = ens.mean(1)
    spread_field = ens.std(1, ddof=1)
    coarse = coarse_grain(torch.as_tensor(truth), k, pad="edge").numpy()

    compare_means = []
    for j, cset in enumerate(compare):
        m, _, _ = sample_times(prior, cond, test_idx, truth, cset, int(cfg.get("compare_members", 4)), seed=seed + 1000 * (j + 1), device=device, gamma=gamma, progress=progress)
        compare_means.append(m.mean(1))

    times = np.asarray(ds["time"].values)[test_idx]
    variables, levels = _channel_layout(channels)
    lat, lon = cond.lat, cond.lon
    coords = {
        "time": times,
        "member": np.arange(members),
        "latitude": lat,
        "longitude": lon,
        "latitude_coarse": coarse_coords(lat, k),
        "longitude_coarse": coarse_coords(lon, k),
        "time_index": ("time", test_idx.astype(np.int64)),
    }
    if levels:
        coords["level"] = np.asarray(levels, np.float64)
    data = {}
    data.update(fields_to_vars(ens, channels, ("time", "member")))
    data.update(fields_to_vars(mean_field, channels, ("time",), "_mean"))
    data.update(fields_to_vars(spread_field, channels, ("time",), "_spread"))
    data.update(fields_to_vars(coarse, channels, ("time",), "_coarse", "latitude_coarse", "longitude_coarse"))
    if compare_means:
        coords["conditioning"] = np.array(["+".join(c) if c else "prior" for c in compare])
        data.update(fields_to_vars(np.stack(compare_means), channels, ("conditioning", "time"), "_mean_compare"))
    out_ds = xr.Dataset({n: (d, np.asarray(a, np.float32)) for n, (d, a) in data.items()}, coords=coords)
    for v in variables:
        if v in ds.data_vars:
            out_ds[v].attrs.update({kk: vv for kk, vv in ds[v].attrs.items() if kk in ("units", "long_name", "standard_name")})
    n_forward, n_backward = cost.forward, cost.backward
    sampling = {
        "conditioning": conditioning,
        "compare": ["+".join(c) for c in compare],
        "guidance": cfg["guidance"],
        "steps": int(cfg["steps"]),
        "churn": float(cfg["churn"]),
        "members": members,
        "coarse_factor": k,
        "coarse_pad": cfg["coarse"].get("pad", "edge"),
        "sigma_y": {
            "coarse": {f"{v}/{lv:g}" if lv is not None else v: _sigma_for(v, s, cfg["coarse"]) for (v, lv), s in zip(channels, std)},
            "radiosondes": {v: (cfg["radiosondes"].get("sigma_y") or {}).get(v, f"{cfg['radiosondes'].get('sigma_y_relative')} x std") for v in variables},
        },
        "gamma": gamma if gamma is not None else {m: cfg[m].get("gamma") for m in MODALITIES},
        "inflation": inflation,
        "raw_spread_normalised": raw_spread,
        "calibration": calib,
        "cost": {"forward_per_sample": n_forward, "backward_per_sample": n_backward, "seconds_per_sample": cost.seconds},
        "observations": obs_info,
        "withheld_stations": withheld or [],
        "seed": seed,
    }
    out_ds.attrs["sampling"] = json.dumps(sampling)
    out_ds.attrs["channels"] = json.dumps([[v, lv] for v, lv in channels])
    out_ds.attrs["provenance"] = json.dumps({"checkpoint": str(checkpoint), "era5": ds.attrs.get("source_path"), "obs": str(obs_path) if obs_path else None, "packages": package_versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    with atomic_path(out) as tmp:
        out_ds.chunk({"time": 1}).to_zarr(tmp, mode="w", consolidated=False)
    if run is not None:
        run.log_metrics({"cost/forward_per_sample": n_forward, "cost/backward_per_sample": n_backward, "cost/seconds_per_sample": cost.seconds})
    log.info("wrote %s: %d times x %d members; %d forward + %d backward network passes per sample, %.3f s per sample", out, len(test_idx), members, n_forward, n_backward, cost.seconds)
    return sampling


def sample_cli(argv: list[str]) -> int:
    """``scorebridge sr-sample``: posterior ensembles of the held-out times -> samples.zarr."""
    from ..config import parse_spec
    from .data import open_era5
    from ..tracking import job_run
    from .prior import load_prior

    p = argparse.ArgumentParser(prog="scorebridge sr-sample", description=sample_cli.__doc__)
    p.add_argument("--spec", required=True, help="the experiment's config entry as JSON")
    p.add_argument("--experiment", default="default")
    p.add_argument("--era5", required=True, help="ERA5 zarr (truth; the coarse input is its coarse-graining)")
    p.add_argument("--obs", default=None, help="collocated radiosonde observations zarr")
    p.add_argument("--checkpoint", required=True, help="the prior written by sr-train")
    p.add_argument("--experiments", default=None, help="results/mlflow/experiments.json (omit: no MLflow)")
    p.add_argument("--device", default=None, help="override sample.device (auto, cpu, cuda)")
    p.add_argument("--out", required=True, help="samples.zarr to write")
    a = p.parse_args(argv)
    spec = _sample_spec(parse_spec(a.spec))
    torch.manual_seed(int(spec.get("seed") or 0))
    if spec["sample"].get("threads"):
        torch.set_num_threads(int(spec["sample"]["threads"]))
    ds = open_era5(a.era5)
    prior = load_prior(a.checkpoint, device=a.device or spec["sample"].get("device", "auto"))
    with job_run(a.experiments, kind="sr", experiment=a.experiment, rule="sr_sample", wildcards={"experiment": a.experiment},
                 spec=spec, datasets={"era5": a.era5, **({"obs": a.obs} if a.obs else {})}) as run:
        run_sampling(prior, ds, spec, a.obs, device=prior.device, out=a.out, checkpoint=a.checkpoint, run=run)
    return 0
