"""Typed options of the bridge stage: the `bridge.<experiment>` config entry as dataclasses.

Built once at the CLI boundary with `scorebridge.options.build(BridgeOptions, spec)` (tests
build them the same way), so every default comes from `schemas/bridge.schema.yaml` and
`schemas/bridge_baselines.schema.yaml`; nothing below the CLI reads the entry as a dict.

`ReferenceOptions` holds the key `class` as the field `class_` (a Python keyword): it is
built by `ModelOptions` and not registered with `scorebridge.options` (whose test checks
field names against the schema's keys). `as_section` turns any of these back into the
config section it was built from (`class_` -> `class`), e.g. to record it in `model.pt`.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any

from ..options import register

__all__ = [
    "SigmaOptions",
    "ReferenceOptions",
    "RefitOptions",
    "PredictOptions",
    "MinibatchOptions",
    "SelectionOptions",
    "ModelOptions",
    "VanillaOptions",
    "EvaluateOptions",
    "McCannOptions",
    "OTCFMOptions",
    "BaselinesOptions",
    "BridgeOptions",
    "as_section",
    "bridge_options",
]

_ENTRY = ("bridge", "*")
_MODEL = (*_ENTRY, "model")
_REFERENCE = (*_MODEL, "reference")
_BASELINES = (*_ENTRY, "baselines")


@register
@dataclass(frozen=True)
class SigmaOptions:
    """`model.reference.sigma`: the reference's noise scale."""

    SCHEMA_PATH = (*_REFERENCE, "sigma")
    init: float | str  # a number, or "auto" (measured on the snapshots being fitted)
    auto_scale: float
    learn: bool
    per_dim: bool
    debias: str


@dataclass(frozen=True)
class ReferenceOptions:
    """`model.reference`: the reference SDE class and its settings (`class_` is the key `class`)."""

    SCHEMA_PATH = _REFERENCE
    class_: str
    noise: str
    sigma: SigmaOptions
    symmetric: bool
    drift: str | None
    params: dict
    positive: bool
    hidden: list

    @classmethod
    def from_section(cls, s: dict) -> "ReferenceOptions":
        return cls(
            class_=s["class"],
            noise=s["noise"],
            sigma=SigmaOptions(**s["sigma"]),
            symmetric=s["symmetric"],
            drift=s["drift"],
            params=dict(s["params"]),
            positive=s["positive"],
            hidden=list(s["hidden"]),
        )


@register
@dataclass(frozen=True)
class RefitOptions:
    """`model.refit`: the L-BFGS refit of the reference."""

    SCHEMA_PATH = (*_MODEL, "refit")
    max_iter: int
    weight_decay: float


@register
@dataclass(frozen=True)
class PredictOptions:
    """`model.predict`: how held-out marginals are drawn from the fitted bridge."""

    SCHEMA_PATH = (*_MODEL, "predict")
    coupling: str
    noise: float


@register
@dataclass(frozen=True)
class SelectionOptions:
    """`model.selection`: the candidates and the rule of `select: inner_loo` (`bridge.select`)."""

    SCHEMA_PATH = (*_MODEL, "selection")
    classes: list
    auto_scales: list
    predict: list
    criterion: str
    draws: int
    rule: str
    resamples: int
    max_tasks: int | None

    @classmethod
    def from_section(cls, s: dict) -> "SelectionOptions":
        return cls(
            classes=list(s["classes"]),
            auto_scales=[float(v) for v in s["auto_scales"]],
            predict=list(s["predict"]),
            criterion=s["criterion"],
            draws=s["draws"],
            rule=s["rule"],
            resamples=s["resamples"],
            max_tasks=s["max_tasks"],
        )


@register
@dataclass(frozen=True)
class MinibatchOptions:
    """`model.minibatch`: the minibatch coupling solver (`bridge.minibatch`)."""

    SCHEMA_PATH = (*_MODEL, "minibatch")
    batch_size: int
    auto_above: int
    device: str


@register
@dataclass(frozen=True)
class ModelOptions:
    """`model`: the multi-marginal SB with iterative reference refinement."""

    SCHEMA_PATH = _MODEL
    reference: ReferenceOptions
    max_iter: int
    tol: float
    substeps: int
    sinkhorn_tol: float
    coupling_solver: str
    minibatch: MinibatchOptions
    refit: RefitOptions
    select: str
    selection: SelectionOptions
    predict: PredictOptions

    @classmethod
    def from_section(cls, s: dict) -> "ModelOptions":
        return cls(
            reference=ReferenceOptions.from_section(s["reference"]),
            max_iter=s["max_iter"],
            tol=s["tol"],
            substeps=s["substeps"],
            sinkhorn_tol=s["sinkhorn_tol"],
            coupling_solver=s["coupling_solver"],
            minibatch=MinibatchOptions(**s["minibatch"]),
            refit=RefitOptions(**s["refit"]),
            select=s["select"],
            selection=SelectionOptions.from_section(s["selection"]),
            predict=PredictOptions(**s["predict"]),
        )


@register
@dataclass(frozen=True)
class VanillaOptions:
    """`vanilla_sb`: the Brownian-reference SB baseline."""

    SCHEMA_PATH = (*_ENTRY, "vanilla_sb")
    sigma: float | None


@register
@dataclass(frozen=True)
class EvaluateOptions:
    """`evaluate`: the held-out splits and what is drawn for them."""

    SCHEMA_PATH = (*_ENTRY, "evaluate")
    holdout: Any  # "loo", a list of indices, or a list of such lists
    n_particles: int | None
    trajectories: int
    bootstrap: int
    level: float


@register
@dataclass(frozen=True)
class McCannOptions:
    """`baselines.mccann`."""

    SCHEMA_PATH = (*_BASELINES, "mccann")
    seed: int | None


@register
@dataclass(frozen=True)
class OTCFMOptions:
    """`baselines.otcfm`: minibatch-OT conditional flow matching."""

    SCHEMA_PATH = (*_BASELINES, "otcfm")
    hidden: int
    layers: int
    steps: int
    lr: float
    batch: int
    sigma: float
    ode_steps: int
    time_input: str
    seed: int | None
    device: str


@register
@dataclass(frozen=True)
class BaselinesOptions:
    """`baselines`: which baselines run beside the model, and their settings."""

    SCHEMA_PATH = _BASELINES
    methods: list
    mccann: McCannOptions
    otcfm: OTCFMOptions

    @classmethod
    def from_section(cls, s: dict) -> "BaselinesOptions":
        return cls(methods=list(s["methods"]), mccann=McCannOptions(**s["mccann"]), otcfm=OTCFMOptions(**s["otcfm"]))


@register
@dataclass(frozen=True)
class BridgeOptions:
    """One `bridge.<experiment>` entry."""

    SCHEMA_PATH = _ENTRY
    cells: str
    seed: int | None
    max_cells: int | None
    min_cells: int
    model: ModelOptions
    vanilla_sb: VanillaOptions
    evaluate: EvaluateOptions
    baselines: BaselinesOptions

    @classmethod
    def from_section(cls, s: dict) -> "BridgeOptions":
        return cls(
            cells=s["cells"],
            seed=s["seed"],
            max_cells=s["max_cells"],
            min_cells=s["min_cells"],
            model=ModelOptions.from_section(s["model"]),
            vanilla_sb=VanillaOptions(**s["vanilla_sb"]),
            evaluate=EvaluateOptions(**s["evaluate"]),
            baselines=BaselinesOptions.from_section(s["baselines"]),
        )

    @property
    def run_seed(self) -> int:
        """`seed`, or (null) the global `seed`'s schema default; the workflow always fills
        in the config's global seed."""
        from .. import options

        if self.seed is not None:
            return int(self.seed)
        return int(options.schema_node(())["properties"]["seed"]["default"])


def as_section(opts: Any) -> Any:
    """The config section an options object was built from (plain dicts and lists, `class_`
    written as `class`): `options.build(type(opts), as_section(opts))` gives `opts` back."""
    if dataclasses.is_dataclass(opts) and not isinstance(opts, type):
        return {f.name.rstrip("_"): as_section(getattr(opts, f.name)) for f in dataclasses.fields(opts)}
    if isinstance(opts, dict):
        return {k: as_section(v) for k, v in opts.items()}
    if isinstance(opts, (list, tuple)):
        return [as_section(v) for v in opts]
    return opts


def bridge_options(spec: dict) -> BridgeOptions:
    """A `bridge.<experiment>` entry (the `--spec` of bridge-fit and bridge-evaluate) validated
    against the schema, every default filled in, as `BridgeOptions`. Errors name the key
    inside the entry (`config key 'model.reference.class'`), as the command receives one
    entry without the name it has in the config; rules across keys (`debias: bootstrap`
    needs `learn: true`, ...) are checked as the workflow's config check does."""
    from .. import options
    from ..config import bridge_entry_rules, validate_config

    section = validate_config(copy.deepcopy(dict(spec)), options.schema_node(BridgeOptions.SCHEMA_PATH))
    bridge_entry_rules(section)
    reference = section["model"]["reference"]
    if reference["class"] == "parametric":  # a drift that cannot be imported: before any input is read
        from .reference.drifts import resolve_drift

        resolve_drift(reference["drift"], key="model.reference.drift")
    return options.build(BridgeOptions, section)
