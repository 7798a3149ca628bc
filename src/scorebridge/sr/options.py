"""Typed options of one super-resolution experiment (entry `sr.<name>` of the config).

The schemas `sr.schema.yaml`, `sr_train.schema.yaml`, `sr_sample.schema.yaml` and
`sr_evaluate.schema.yaml` are the only place a default is written. The CLI turns the
rule's JSON entry into an :class:`Experiment` once, with :func:`resolve_spec`
(`scorebridge.options.build`: validated, every default filled); tests build options
the same way, so a partial dict in a test runs with exactly the workflow's defaults.
Below the CLI nothing reads a config dict.

`dataclasses.asdict(experiment)` is the validated entry as a plain dict (what the
checkpoint records and the checkpoint identity hashes).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .. import options
from ..core.train import EMAOptions, TrainOptions
from .patches import PatchOptions

__all__ = [
    "SplitOptions",
    "ModelOptions",
    "EDMOptions",
    "SRTrainOptions",
    "CoarseOptions",
    "RadiosondeOptions",
    "CalibrateOptions",
    "SampleOptions",
    "EvaluateOptions",
    "Experiment",
    "resolve_spec",
]


def _from_section(cls, section: dict, nested: dict[str, type]) -> Any:
    """`cls` from a validated, default-filled section; the `nested` keys become their own
    options classes (built through their own `from_section` when they have one)."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        value = section[f.name]
        sub = nested.get(f.name)
        if sub is not None:
            hook = getattr(sub, "from_section", None)
            value = hook(value) if hook is not None else sub(**value)
        kwargs[f.name] = value
    return cls(**kwargs)


# --- sr.<name>.train -----------------------------------------------------------------------


@options.register
@dataclass(frozen=True)
class SplitOptions:
    """Training vs held-out times (`train.split`); see `scorebridge.sr.data.split_times`."""

    SCHEMA_PATH = ("sr", "*", "train", "split")
    train_fraction: float
    train_start: str | None
    train_end: str | None
    test_start: str | None
    test_end: str | None
    gap: int
    validation: int


@options.register
@dataclass(frozen=True)
class ModelOptions:
    """The U-Net (`train.model`); `periodic` and `skip` are "auto" until `sr.train.resolve_periodic`
    and `sr.train.resolve_skip` replace them (axis names; "wiener" or "scalar")."""

    SCHEMA_PATH = ("sr", "*", "train", "model")
    base: int
    mults: list[int]
    blocks: int
    attention: bool
    dropout: float
    periodic: str | list[str]
    padding: str
    skip: str


@options.register
@dataclass(frozen=True)
class EDMOptions:
    """EDM preconditioning, training noise distribution and sampling range (`train.edm`)."""

    SCHEMA_PATH = ("sr", "*", "train", "edm")
    sigma_data: float
    p_mean: float
    p_std: float
    sigma_min: float
    sigma_max: float


@options.register
@dataclass(frozen=True)
class SRTrainOptions(TrainOptions):
    """`sr.<name>.train`: the optimisation (the shared loop's :class:`TrainOptions`) plus
    what the prior learns from (channels, split, crops, network, EDM) and where it runs."""

    SCHEMA_PATH = ("sr", "*", "train")
    NESTED = {"ema": EMAOptions, "split": SplitOptions, "model": ModelOptions, "edm": EDMOptions}
    variables: list[str] | None
    levels: list[float] | None
    split: SplitOptions
    crop: int | list[int] | None
    model: ModelOptions
    edm: EDMOptions
    anomalies: bool
    random_shift: bool
    device: str
    threads: int | None
    nproc: int
    max_memory_mb: float
    prefetch: int

    @classmethod
    def from_section(cls, section: dict) -> "SRTrainOptions":
        return _from_section(cls, section, cls.NESTED)


# --- sr.<name>.sample ----------------------------------------------------------------------


@options.register
@dataclass(frozen=True)
class CoarseOptions:
    """The coarse-field modality (`sample.coarse`)."""

    SCHEMA_PATH = ("sr", "*", "sample", "coarse")
    sigma_y: dict[str, float]
    sigma_y_relative: float
    gamma: float
    zeta: float
    factor: int
    pad: str


@options.register
@dataclass(frozen=True)
class RadiosondeOptions:
    """The radiosonde modality (`sample.radiosondes`)."""

    SCHEMA_PATH = ("sr", "*", "sample", "radiosondes")
    sigma_y: dict[str, float]
    sigma_y_relative: float
    gamma: float
    zeta: float
    withheld_fraction: float
    withheld_stations: list[str]
    outside: str


@options.register
@dataclass(frozen=True)
class CalibrateOptions:
    """Choice of each modality's guidance gamma and the spread inflation (`sample.calibrate`)."""

    SCHEMA_PATH = ("sr", "*", "sample", "calibrate")
    enabled: bool
    times: int
    gap_hours: float
    members: int | None
    gammas: list[float]
    inflation: bool
    per_channel: bool
    inflation_range: list[float]


@options.register
@dataclass(frozen=True)
class SampleOptions:
    """`sr.<name>.sample`: the sampler, the modalities and the calibration."""

    SCHEMA_PATH = ("sr", "*", "sample")
    NESTED = {
        "coarse": CoarseOptions,
        "radiosondes": RadiosondeOptions,
        "calibrate": CalibrateOptions,
        "patch": PatchOptions,
    }
    conditioning: list[str]
    compare: list[list[str]] | None
    compare_members: int
    members: int
    steps: int
    solver: str
    guidance: str
    cg_iterations: int
    covariance: str
    churn: float
    s_tmin: float
    s_tmax: float | None
    s_noise: float
    rho: float
    sigma_min: float | None
    max_times: int | None
    batch_size: int | str
    device: str
    threads: int | None
    precision: str
    channels_last: bool
    patch: PatchOptions | None
    coarse: CoarseOptions
    radiosondes: RadiosondeOptions
    calibrate: CalibrateOptions

    @classmethod
    def from_section(cls, section: dict) -> "SampleOptions":
        return _from_section(cls, section, cls.NESTED)

    def with_gamma(self, gamma: float | dict | None) -> "SampleOptions":
        """These options with the modalities' guidance `gamma` replaced: one number for
        every modality, ``{modality: gamma}`` for some, None: unchanged."""
        if gamma is None:
            return self
        per = gamma if isinstance(gamma, dict) else {"coarse": gamma, "radiosondes": gamma}
        unknown = sorted(set(per) - {"coarse", "radiosondes"})
        if unknown:
            raise ValueError(f"gamma for unknown modalities {unknown}; expected coarse, radiosondes")
        changes = {m: dataclasses.replace(getattr(self, m), gamma=float(g)) for m, g in per.items()}
        return dataclasses.replace(self, **changes)


# --- sr.<name>.evaluate --------------------------------------------------------------------


@options.register
@dataclass(frozen=True)
class EvaluateOptions:
    """`sr.<name>.evaluate`: figures and the nearest-radiosonde baseline."""

    SCHEMA_PATH = ("sr", "*", "evaluate")
    map_time: int
    map_channels: int
    station_pressure_tolerance_pa: float


# --- sr.<name> -----------------------------------------------------------------------------


@options.register
@dataclass(frozen=True)
class Experiment:
    """One SR experiment (`sr.<name>`): datasets, seed, and its three stages."""

    SCHEMA_PATH = ("sr", "*")
    NESTED = {"train": SRTrainOptions, "sample": SampleOptions, "evaluate": EvaluateOptions}
    era5: str
    igra: str | None
    seed: int | None
    train: SRTrainOptions
    sample: SampleOptions
    evaluate: EvaluateOptions

    @classmethod
    def from_section(cls, section: dict) -> "Experiment":
        return _from_section(cls, section, cls.NESTED)

    @property
    def run_seed(self) -> int:
        """`seed`, or (null) the global `seed`'s schema default; the workflow always fills
        in the config's global seed."""
        if self.seed is not None:
            return int(self.seed)
        return int(options.schema_node(())["properties"]["seed"]["default"])


def resolve_spec(spec: dict, where: str | None = None) -> Experiment:
    """The experiment entry `spec` validated against the schema, every default filled in,
    as an :class:`Experiment`; errors (`ConfigError`) name the key under `where`
    (default `sr.*`, e.g. `sr.*.train.lr`)."""
    return options.build(Experiment, spec, where=where)
