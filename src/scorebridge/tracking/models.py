"""The trained SR prior and the fitted bridge as MLflow models whose `predict` samples.

Each is logged, at the end of its job (`sr_train`, `bridge_fit`), as an MLflow 3 logged
model of the job's run (`models:/<model_id>`, listed on the run's page), in the pyfunc
format:

- `scorebridge-sr-prior`: input rows `n` (members) and optionally `seed`; param `steps`
  (default: the experiment's `sample.steps`) -> unconditional prior samples `(N, C, H, W)`
  float32 in physical units on the training grid (channels in the model's metadata,
  `channels`), drawn with the experiment's Heun sampler settings;
- `scorebridge-bridge`: input rows `t` (any time), `n` (particles) and optionally `seed`
  -> a table of particles: column `t` and one per feature (the input's feature names),
  drawn as the evaluation draws them (`model.predict`: coupling and noise).

The model holds the job's own file (`checkpoint.pt`, `model.pt`) as an artifact and reads
it in `load_context` with the loaders that refuse pickled code
(`scorebridge.sr.prior.load_prior`, `scorebridge.bridge.model_io.load_model`); the only
pickled object is the small `PythonModel` instance (MLflow's own format, plain data in
it). The experiment's config is the artifact `config.json`. Loading needs this package
installed (the model's requirements name it and the versions it was logged with).

With `tracking.register: true` each logged model also becomes a new version of the
registered model `<prefix>-<kind>-<experiment>` (e.g. `scorebridge-sr-default`).

Logging a model never breaks the job: a failure is a warning (the run keeps its other
logs; with `tracking.on_error: fail` it is an error). A run that is offline logs no model
(its checkpoint stays in the pending file's artifacts).
"""

from __future__ import annotations

import json
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from ..errors import InputError
from ..provenance import package_versions, redact
from .options import TrackingError
from .store import retry_locked

__all__ = [
    "PriorSampler",
    "BridgeSampler",
    "log_prior_model",
    "log_bridge_model",
    "registered_name",
    "prior_signature",
    "bridge_signature",
]

CHECKPOINT = "checkpoint"
CONFIG = "config"


def _rows(model_input: Any, columns: tuple[str, ...], optional: tuple[str, ...] = ("seed",)) -> pd.DataFrame:
    """The input as a DataFrame with `columns` (a dict of scalars is one row)."""
    if isinstance(model_input, dict):
        model_input = (
            pd.DataFrame([model_input])
            if all(np.isscalar(v) for v in model_input.values())
            else pd.DataFrame(model_input)
        )
    if not isinstance(model_input, pd.DataFrame):
        raise InputError(
            f"model input must be a table (DataFrame or dict) with columns {list(columns)}, got {type(model_input).__name__}"
        )
    missing = [c for c in columns if c not in model_input.columns]
    if missing:
        raise InputError(
            f"model input lacks column(s) {missing}; expected {list(columns)} and optionally {list(optional)}"
        )
    if "n" in model_input.columns:
        bad = model_input.index[~(pd.to_numeric(model_input["n"], errors="coerce") >= 1)].tolist()
        if bad:
            raise InputError(f"model input column 'n' must be a positive integer (rows {bad[:5]})")
    return model_input


def _generator(row: pd.Series):
    """A torch generator seeded by the row's `seed`, or None (torch's global one)."""
    import torch

    if "seed" in row.index and pd.notna(row["seed"]):
        return torch.Generator().manual_seed(int(row["seed"]))
    return None


class PriorSampler(mlflow.pyfunc.PythonModel):
    """Unconditional samples of the trained SR prior (see the module docstring)."""

    def __init__(self, sampler: dict, grid: tuple[int, int], channels: list[str]):
        self.sampler = dict(sampler)  # steps, churn, s_tmin, s_tmax, s_noise, rho
        self.grid = tuple(int(v) for v in grid)
        self.channels = list(channels)

    def load_context(self, context) -> None:
        from ..sr.prior import load_prior

        self.prior = load_prior(context.artifacts[CHECKPOINT], device="auto")

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> np.ndarray:
        import torch

        from ..sr.sampler import posterior_sample

        rows = _rows(model_input, ("n",))
        steps = int((params or {})["steps"]) if "steps" in (params or {}) else int(self.sampler["steps"])
        norm = self.prior.normalisation
        s = self.sampler
        out = []
        for _, row in rows.iterrows():
            x, _ = posterior_sample(
                self.prior,
                [],
                int(row["n"]),
                steps,
                shape=(self.prior.n_channels, *self.grid),
                mean=torch.as_tensor(norm.mean),
                std=torch.as_tensor(norm.std),
                guidance="none",
                churn=float(s["churn"]),
                s_tmin=float(s["s_tmin"]),
                s_tmax=float(s["s_tmax"]),
                s_noise=float(s["s_noise"]),
                rho=float(s["rho"]),
                generator=_generator(row),
                device=self.prior.device,
            )
            out.append(x[0].cpu().numpy().astype(np.float32))
        return np.concatenate(out, axis=0)


class BridgeSampler(mlflow.pyfunc.PythonModel):
    """Particles of the fitted bridge's marginals (see the module docstring)."""

    def __init__(self, features: list[str]):
        self.features = list(features)

    def load_context(self, context) -> None:
        from ..bridge.model_io import load_model

        self.result, _ = load_model(context.artifacts[CHECKPOINT])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        rows = _rows(model_input, ("t", "n"))
        mode = self.result.options.predict
        frames = []
        for _, row in rows.iterrows():
            x = self.result.bridge.sample_at(
                float(row["t"]), int(row["n"]), _generator(row), noise=float(mode.noise), coupling=mode.coupling
            ).numpy()
            frame = pd.DataFrame(x.astype(np.float64), columns=self.features)
            frame.insert(0, "t", float(row["t"]))
            frames.append(frame)
        return pd.concat(frames, ignore_index=True)


def prior_signature(channels: int, grid: tuple[int, int], steps: int):
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([ColSpec("long", "n"), ColSpec("long", "seed", required=False)]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, int(channels), int(grid[0]), int(grid[1])), "samples")]),
        params=ParamSchema([ParamSpec("steps", "long", int(steps))]),
    )


def bridge_signature(features: list[str]):
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("double", "t"), ColSpec("long", "n"), ColSpec("long", "seed", required=False)]),
        outputs=Schema([ColSpec("double", "t"), *[ColSpec("double", f) for f in features]]),
    )


def registered_name(experiment_label: str) -> str:
    """`<prefix>/<kind>/<experiment>` -> `<prefix>-<kind>-<experiment>`."""
    return experiment_label.replace("/", "-")


def _requirements() -> list[str]:
    versions = package_versions()
    names = ("scorebridge", "mlflow", "torch", "numpy", "pandas", "scipy", "pot")
    return [f"{n}=={versions[n]}" if n in versions and versions[n] not in ("", "unknown") else n for n in names]


def _log(run, *, name: str, python_model, artifact: Path, config: dict, signature, metadata: dict) -> dict | None:
    """Log `python_model` (with `artifact` and `config.json`) as a logged model of `run`;
    register it when `tracking.register`. Returns {model_id, uri[, registered, version]}."""
    if not (run.online and run.run_id):
        if run.settings is not None:  # a TrackedRun that went offline
            print(f"scorebridge: WARNING: the {name} model is not logged (the MLflow run is offline)", file=sys.stderr)
        return None
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus
    from mlflow.models import Model

    client = run.client
    try:
        with tempfile.TemporaryDirectory(prefix="scorebridge-model-") as tmp:
            cfg = Path(tmp) / "config.json"
            cfg.write_text(run.scrub(json.dumps(redact(config), indent=1, default=str)))
            model = retry_locked(
                client.create_logged_model,
                run.experiment_id,
                name=name,
                source_run_id=run.run_id,
                model_type=name,
                tags={"scorebridge.rule": run.meta["rule"], "scorebridge.experiment": run.meta["experiment"]},
            )
            local = Path(tmp) / "model"
            with warnings.catch_warnings():  # the signature is explicit: no type hints or input example needed
                warnings.filterwarnings("ignore", message=".*(type hints|input example).*", category=UserWarning)
                mlflow.pyfunc.save_model(
                    str(local),
                    python_model=python_model,
                    artifacts={CHECKPOINT: str(artifact), CONFIG: str(cfg)},
                    signature=signature,
                    pip_requirements=_requirements(),
                    metadata=metadata,
                    mlflow_model=Model(
                        artifact_path=model.artifact_location,
                        run_id=run.run_id,
                        model_id=model.model_id,
                        model_uuid=model.model_id,
                    ),
                )
            retry_locked(client.log_model_artifacts, model.model_id, str(local))
        retry_locked(client.finalize_logged_model, model.model_id, LoggedModelStatus.READY)
        retry_locked(client.log_outputs, run.run_id, [LoggedModelOutput(model.model_id, step=0)])
        info: dict[str, Any] = {"model_id": model.model_id, "uri": f"models:/{model.model_id}"}
        if run.settings is not None and run.settings.register:
            info.update(_register(client, registered_name(run.experiment_label), model, run.run_id))
        run.set_tags({f"scorebridge.model.{name}": info["uri"]})
        return info
    except TrackingError:
        raise
    except Exception as err:  # noqa: BLE001 - a model that cannot be logged never breaks the job
        msg = f"the {name} model was not logged: {type(err).__name__}: {run.scrub(str(err))[:500]}"
        if run.on_error == "fail":
            raise TrackingError(msg + " (set tracking.on_error: warn to keep going)") from None
        print(f"scorebridge: WARNING: {msg}", file=sys.stderr, flush=True)
        return None


def _register(client, name: str, model, run_id: str) -> dict:
    """A new version of registered model `name` (created when missing; race-safe) from
    logged model `model` (its artifact location: a `models:/` source would be resolved
    through the process-global tracking URI)."""
    from mlflow.exceptions import MlflowException

    try:
        retry_locked(client.create_registered_model, name, tags={"scorebridge": "true"})
    except MlflowException as err:
        if err.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    version = retry_locked(
        client.create_model_version,
        name,
        model.artifact_location,
        run_id=run_id,
        model_id=model.model_id,
        await_creation_for=0,
    )
    return {"registered": name, "version": str(version.version)}


def log_prior_model(run, checkpoint: str | Path) -> dict | None:
    """Log the SR prior written by `sr-train` (`checkpoint`) as a model of `run` (the job's
    run; an untracked or offline run logs nothing and returns None)."""
    if not (getattr(run, "online", False) and run.run_id):
        return _log(
            run,
            name="scorebridge-sr-prior",
            python_model=None,
            artifact=Path(checkpoint),
            config={},
            signature=None,
            metadata={},
        )
    from ..core.checkpoint import load_checkpoint
    from ..sr.data import channel_names
    from ..sr.prior import FORMAT

    state = load_checkpoint(checkpoint)  # tensors and plain data only
    if state["format"] != FORMAT:
        raise InputError(f"not an SR prior checkpoint (format {state['format']!r}, expected {FORMAT!r})", checkpoint)
    config = state["config"]
    sample = config["sample"]
    sampler = {k: sample[k] for k in ("steps", "churn", "s_tmin", "s_noise", "rho")}
    sampler["s_tmax"] = float("inf") if sample["s_tmax"] is None else float(sample["s_tmax"])
    grid = tuple(int(v) for v in state["identity"]["grid"])
    names = channel_names([(v, lv) for v, lv in state["channels"]])
    return _log(
        run,
        name="scorebridge-sr-prior",
        python_model=PriorSampler(sampler, grid, names),
        artifact=Path(checkpoint),
        config=config,
        signature=prior_signature(len(names), grid, int(sample["steps"])),
        metadata={
            "format": FORMAT,
            "channels": names,
            "grid": list(grid),
            "units": "physical",
            "output": "unconditional prior samples (N, C, H, W)",
        },
    )


def log_bridge_model(run, model_path: str | Path) -> dict | None:
    """Log the bridge written by `bridge-fit` (`model_path`) as a model of `run`."""
    if not (getattr(run, "online", False) and run.run_id):
        return _log(
            run,
            name="scorebridge-bridge",
            python_model=None,
            artifact=Path(model_path),
            config={},
            signature=None,
            metadata={},
        )
    from ..bridge.model_io import FORMAT, load_model

    result, meta = load_model(model_path)  # tensors and JSON only
    dim = int(result.bridge.dim)
    features = [str(f) for f in meta["features"]] if meta.get("features") else [f"x{i}" for i in range(dim)]
    return _log(
        run,
        name="scorebridge-bridge",
        python_model=BridgeSampler(features),
        artifact=Path(model_path),
        config=meta["spec"],
        signature=bridge_signature(features),
        metadata={
            "format": FORMAT,
            "features": features,
            "times": [float(t) for t in result.bridge.times],
            "predict": {"coupling": result.options.predict.coupling, "noise": float(result.options.predict.noise)},
            "output": "particles: column t and one per feature",
        },
    )
