"""The trained SR prior and the fitted bridge as MLflow models that sample, and system
metrics on the training and sampling runs (issue 15).

A tiny prior trained by `scorebridge sr-train --experiments` (the job's own run logs it)
and a bridge fitted through `fit_bridge` + `save_model` (what `bridge-fit` writes) are
logged to a SQLite store in tmp, loaded back with `mlflow.pyfunc.load_model` and sampled.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from scorebridge.errors import UnsafeFileError
from scorebridge.tracking.options import ENV_TRACKING, TrackingOptions
from scorebridge.tracking.store import write_experiments

SETTINGS = {"register": True, "system_metrics": {"enabled": True, "interval": 0.5}}
SR_SPEC = {
    "era5": "toy",
    "seed": 3,
    "sample": {"steps": 3},
    "train": {"steps": 6, "batch_size": 2, "log_every": 2, "threads": 1, "model": {"base": 8, "mults": [1, 2]}},
}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A fresh SQLite store with experiments sr/toy and bridge/tiny; MLflow's global URI
    pointed at it for `models:/` look-ups (restored afterwards)."""
    import mlflow

    tmp = tmp_path_factory.mktemp("models")
    out = tmp / "results" / "mlflow" / "experiments.json"
    info = write_experiments(TrackingOptions.of({}), ["toy"], ["tiny"], out, tmp / "results")
    previous = mlflow.get_tracking_uri() if os.environ.get("MLFLOW_TRACKING_URI") else None
    mlflow.set_tracking_uri(info["uri"])
    yield tmp, out, info
    mlflow.set_tracking_uri(previous or "")


@pytest.fixture
def settings(monkeypatch):
    monkeypatch.setenv(ENV_TRACKING, json.dumps(SETTINGS))  # what the workflow sets from `tracking:`


@pytest.fixture(scope="module")
def trained(store):
    """`scorebridge sr-train` of a tiny prior, logged to the store; (checkpoint, run)."""
    from mlflow import MlflowClient

    from scorebridge.cli import main
    from scorebridge.sr.data import write_toy_era5

    tmp, experiments, info = store
    toy = write_toy_era5(tmp / "toy.zarr", ntime=12, nlat=8, nlon=12, variables=("t",), levels=(850.0, 500.0), seed=1)
    ck = tmp / "sr" / "toy" / "checkpoint.pt"
    env = os.environ.get(ENV_TRACKING)
    os.environ[ENV_TRACKING] = json.dumps(SETTINGS)
    try:
        assert (
            main(
                [
                    "sr-train",
                    "--spec",
                    json.dumps(SR_SPEC),
                    "--experiment",
                    "toy",
                    "--era5",
                    str(toy),
                    "--experiments",
                    str(experiments),
                    "--out",
                    str(ck),
                ]
            )
            == 0
        )
    finally:
        os.environ.pop(ENV_TRACKING) if env is None else os.environ.__setitem__(ENV_TRACKING, env)
    (run,) = MlflowClient(info["uri"]).search_runs([info["experiments"]["sr"]["toy"]])
    return ck, run


def test_sr_train_logs_a_prior_model_that_samples(store, trained):
    import mlflow
    from mlflow import MlflowClient

    tmp, experiments, info = store
    ck, run = trained
    client = MlflowClient(info["uri"])
    (output,) = run.outputs.model_outputs
    model = client.get_logged_model(output.model_id)
    assert model.name == "scorebridge-sr-prior" and str(model.status) in ("READY", "LoggedModelStatus.READY")
    assert model.source_run_id == run.info.run_id
    assert run.data.tags["scorebridge.model.scorebridge-sr-prior"] == f"models:/{output.model_id}"
    # registered: a new version of scorebridge-sr-toy from this run
    (version,) = client.search_model_versions("name = 'scorebridge-sr-toy'")
    assert version.run_id == run.info.run_id and version.version in (1, "1")

    loaded = mlflow.pyfunc.load_model(f"models:/{output.model_id}")
    meta = loaded.metadata
    assert meta.metadata["channels"] == ["t/850", "t/500"] and meta.metadata["grid"] == [8, 12]
    sig = meta.signature
    assert [c.name for c in sig.inputs.inputs] == ["n", "seed"] and sig.params.params[0].name == "steps"
    assert sig.params.params[0].default == 3  # the experiment's sample.steps
    x = loaded.predict({"n": 3, "seed": 0})
    assert x.shape == (3, 2, 8, 12) and x.dtype == np.float32 and np.isfinite(x).all()
    assert np.array_equal(loaded.predict(pd.DataFrame({"n": [3], "seed": [0]})), x)  # seeded: reproducible
    assert not np.allclose(loaded.predict({"n": 3, "seed": 1}), x)
    assert loaded.predict({"n": 2, "seed": 0}, params={"steps": 2}).shape == (2, 2, 8, 12)
    two = loaded.predict(pd.DataFrame({"n": [1, 2], "seed": [5, 6]}))
    assert two.shape == (3, 2, 8, 12)
    # physical units: around the training data's per-channel mean, not the normalised scale
    from scorebridge.sr.prior import load_prior

    prior = load_prior(ck, device="cpu")
    assert np.abs(x.mean(axis=(0, 2, 3)) - prior.normalisation.mean).max() < 10 * prior.normalisation.std.max()
    registered = mlflow.pyfunc.load_model("models:/scorebridge-sr-toy/1")
    assert np.array_equal(registered.predict({"n": 3, "seed": 0}), x)

    # the artifacts: the job's checkpoint itself and the experiment's config
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{output.model_id}", dst_path=str(tmp / "dl")))
    assert (local / "artifacts" / "checkpoint.pt").read_bytes() == ck.read_bytes()
    config = json.loads((local / "artifacts" / "config.json").read_text())
    assert config["train"]["steps"] == 6 and config["sample"]["steps"] == 3


def test_a_crafted_checkpoint_in_a_logged_model_runs_nothing(store, trained, tmp_path):
    """The model reads its checkpoint with the safe loader: a pickle put in its place is
    refused on load and runs nothing (only MLflow's python_model.pkl is unpickled)."""
    import mlflow

    ck, run = trained
    (output,) = run.outputs.model_outputs
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{output.model_id}", dst_path=str(tmp_path / "m")))
    marker = tmp_path / "PWNED"

    class Payload:
        def __reduce__(self):
            return (os.mknod, (str(marker),))

    torch.save({"format": "scorebridge-sr-prior/1", "evil": Payload()}, local / "artifacts" / "checkpoint.pt")
    with pytest.raises(UnsafeFileError, match="refused"):
        mlflow.pyfunc.load_model(str(local))
    assert not marker.exists()


def test_training_run_has_system_metrics(store, trained):
    from mlflow import MlflowClient

    tmp, experiments, info = store
    ck, run = trained
    client = MlflowClient(info["uri"])
    metrics = run.data.metrics
    for name in (
        "system/cpu_utilization_percentage",
        "system/system_memory_usage_megabytes",
        "system/system_memory_usage_percentage",
    ):
        assert name in metrics, sorted(metrics)
    cpu = client.get_metric_history(run.info.run_id, "system/cpu_utilization_percentage")
    assert len(cpu) >= 1 and sorted(m.step for m in cpu) == list(range(len(cpu)))  # one per sample, the last at the end
    assert all(0.0 <= m.value <= 100.0 * os.cpu_count() for m in cpu)
    assert metrics["system/system_memory_usage_megabytes"] > 0
    assert "train/loss" in metrics  # next to the loss


def _fit_tiny_bridge(path: Path) -> Path:
    """What `bridge-fit` writes, through the same calls: fit_bridge + save_model."""
    from scorebridge.bridge.fit import fit_bridge
    from scorebridge.bridge.model_io import save_model
    from scorebridge.bridge.options import bridge_options

    rng = np.random.default_rng(0)
    times = [0.0, 1.0, 2.0]
    snaps = [np.array([np.cos(t), np.sin(t)]) * 2 + 0.3 * rng.normal(size=(25, 2)) for t in times]
    opts = bridge_options({"cells": "tiny", "seed": 0, "model": {"reference": {"class": "linear"}, "max_iter": 2}})
    result = fit_bridge(snaps, times, opts.model, seed=0)
    save_model(result, path, {"features": ["gene_a", "gene_b"]})
    return path


def test_fitted_bridge_logged_as_a_model_that_samples(store, settings, tmp_path):
    import mlflow

    from scorebridge.tracking import job_run
    from scorebridge.tracking.models import log_bridge_model

    tmp, experiments, info = store
    model_pt = _fit_tiny_bridge(tmp_path / "model.pt")
    with job_run(
        experiments,
        kind="bridge",
        experiment="tiny",
        rule="bridge_fit",
        wildcards={"experiment": "tiny"},
        spec={"cells": "tiny"},
        datasets={},
        system_metrics=True,
    ) as run:
        logged = log_bridge_model(run, model_pt)
    assert logged["registered"] == "scorebridge-bridge-tiny" and logged["version"] == "1"
    loaded = mlflow.pyfunc.load_model(logged["uri"])
    assert loaded.metadata.metadata["features"] == ["gene_a", "gene_b"]
    assert loaded.metadata.metadata["times"] == [0.0, 1.0, 2.0]
    out = loaded.predict(pd.DataFrame({"t": [0.5, 2.0], "n": [5, 7], "seed": [1, 1]}))
    assert list(out.columns) == ["t", "gene_a", "gene_b"] and len(out) == 12
    assert out["t"].tolist() == [0.5] * 5 + [2.0] * 7 and np.isfinite(out[["gene_a", "gene_b"]].to_numpy()).all()
    again = loaded.predict(pd.DataFrame({"t": [0.5, 2.0], "n": [5, 7], "seed": [1, 1]}))
    pd.testing.assert_frame_equal(out, again)
    # inside the observed range the particles sit near the snapshots' circle (radius 2)
    radius = np.hypot(out["gene_a"], out["gene_b"])
    assert 1.0 < radius.mean() < 3.0
    # the same bridge, loaded directly, draws the same particles from the same seed
    from scorebridge.bridge.model_io import load_model

    result, _ = load_model(model_pt)
    mode = result.options.predict
    direct = result.bridge.sample_at(
        0.5, 5, torch.Generator().manual_seed(1), noise=float(mode.noise), coupling=mode.coupling
    )
    np.testing.assert_allclose(out[["gene_a", "gene_b"]].to_numpy()[:5], direct.numpy())
    with pytest.raises(Exception, match=r"missing inputs \['t'\]"):  # the signature is enforced
        loaded.predict(pd.DataFrame({"n": [3]}))


def test_system_metrics_off_and_untracked_runs_log_nothing(store, monkeypatch):
    from mlflow import MlflowClient

    from scorebridge.tracking import job_run
    from scorebridge.tracking.models import log_bridge_model, log_prior_model

    tmp, experiments, info = store
    monkeypatch.setenv(ENV_TRACKING, json.dumps({"system_metrics": {"enabled": False}}))
    with job_run(
        experiments,
        kind="sr",
        experiment="toy",
        rule="sr_sample",
        wildcards={"experiment": "toy"},
        spec={},
        datasets={},
        system_metrics=True,
    ) as run:
        run.log_metrics({"x": 1.0})
    assert not [k for k in MlflowClient(info["uri"]).get_run(run.run_id).data.metrics if k.startswith("system/")]
    with job_run(
        None, kind="sr", experiment="toy", rule="sr_train", wildcards={}, spec={}, datasets={}, system_metrics=True
    ) as run:
        assert log_prior_model(run, tmp / "nothing.pt") is None and log_bridge_model(run, tmp / "nothing.pt") is None


def test_models_module_needs_no_user_pickle(store):
    """The python_model pickled by MLflow holds plain data only (sampler settings, grid,
    names), never the weights: those come from the checkpoint at load time."""
    from scorebridge.tracking.models import BridgeSampler, PriorSampler

    p = PriorSampler(
        {"steps": 3, "churn": 0.0, "s_tmin": 0.0, "s_tmax": float("inf"), "s_noise": 1.0, "rho": 7.0},
        (8, 12),
        ["t/850"],
    )
    assert set(vars(p)) == {"sampler", "grid", "channels"}
    assert set(vars(BridgeSampler(["a"]))) == {"features"}
    shutil.rmtree(store[0] / "dl", ignore_errors=True)
