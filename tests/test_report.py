"""`snakemake --report`: every figure and metrics table, captioned; the jobs behind them
ran in parallel and logged to MLflow.

Two levels:
- the tracking/report plumbing of this repository (rules tracking_init, *_metrics_table,
  common.smk's declared figures, the captions in workflow/report/) driven by a small
  evaluate stand-in that logs through `tracked_run` and `save_figure`, with 4 parallel
  jobs; always runs;
- the real workflow on `config/test.yaml` with 4 parallel jobs, its report as a zip: every
  figure the rules wrote is in it with its own caption, and the outputs describe themselves
  (CF attributes of samples.zarr and the IGRA store, cell and feature names kept).
"""

from __future__ import annotations

import base64
import json
import re
import zipfile
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, run_snakemake

CDS_KEY = "161803:3b2a1c0d-report-env-secret-9e8f"
# the stand-in writes two of the real figures of each family, declared as the rules declare them
STAND_IN_FIGURES = {"sr": ["maps", "spectra"], "bridge": ["trajectories", "w1"]}

JOB = """
import argparse, os
import numpy as np
from scorebridge.config import parse_spec
from scorebridge.io import write_json
from scorebridge.plots import new_figure, save_figure
from scorebridge.tracking import tracked_run

ap = argparse.ArgumentParser()
for a in ("--kind", "--experiment", "--spec", "--experiments", "--out", "--figures", "--data", "--names"):
    ap.add_argument(a)
a = ap.parse_args()
spec = parse_spec(a.spec)
rng = np.random.default_rng(spec["seed"])
with tracked_run(experiments=a.experiments, kind=a.kind, experiment=a.experiment, rule=f"{a.kind}_evaluate",
                 wildcards={"experiment": a.experiment}, spec=spec, datasets={"data": a.data}) as run:
    for step in range(50):
        run.log_metrics({"train/loss": float(np.exp(-step / 10))}, step=step)
    for name in a.names.split(","):
        fig, ax = new_figure()
        ax.plot(rng.standard_normal(20).cumsum())
        ax.set_title(f"{name} {a.experiment}")
        save_figure(fig, os.path.join(a.figures, f"{name}.png"), run=run)
    metrics = {"rmse": {"t": {"850": 1.25, "500": 2.5}}, "crps": {"t": {"850": 0.5, "500": 1.0}}, "wall_time_s": 3.0}
    run.log_metrics({"rmse/t/850": 1.25, "rmse/t/500": 2.5, "crps/t/850": 0.5, "crps/t/500": 1.0})
    write_json(a.out, metrics)
    run.log_artifact(a.out)
"""

SNAKEFILE = """
# The repository's tracking and report rules, with an evaluate stand-in per model family.
ROOT = "{root}"


configfile: "config.yaml"


report: f"{{ROOT}}/workflow/report/workflow.rst"


include: f"{{ROOT}}/workflow/rules/common.smk"
include: f"{{ROOT}}/workflow/rules/tracking.smk"


STAND_IN_FIGURES = {stand_in}


rule all:
    input:
        expand("results/sr/{{e}}/metrics.html", e=names("sr")),
        expand("results/bridge/{{e}}/metrics.html", e=names("bridge")),


rule data:
    output:
        "results/data/{{kind}}.txt",
    shell:
        "echo {{wildcards.kind}} > {{output}}"


for _kind, _category in (("sr", "Super-resolution"), ("bridge", "Schrödinger bridges")):

    rule:
        name:
            f"{{_kind}}_evaluate"
        input:
            data=f"results/data/{{_kind}}.txt",
            experiments="results/mlflow/experiments.json",
        output:
            metrics=f"results/{{_kind}}/{{{{experiment}}}}/metrics.json",
            # the figures as the real rules declare them (common.smk): one output and caption each
            **report_figures(_kind, STAND_IN_FIGURES[_kind]),
        params:
            kind=_kind,
            spec=lambda w, kind=_kind: spec_json(kind, w.experiment),
            names=",".join(STAND_IN_FIGURES[_kind]),
            figures=lambda w, kind=_kind: f"results/{{kind}}/{{w.experiment}}/figures",
        shell:
            "python job.py --kind {{params.kind}} --experiment {{wildcards.experiment}} --spec {{params.spec:q}} "
            "--experiments {{input.experiments}} --data {{input.data}} --out {{output.metrics}} --figures {{params.figures}} "
            "--names {{params.names}}"
"""


def report_payload(html: str) -> str:
    """The report's text with embedded base64 payloads decoded (captions, tables)."""
    html = re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), html)  # JSON string escapes
    parts = [html]
    for blob in re.findall(r"data:[\w/+.-]+;(?:charset=[\w-]+;)?base64,([A-Za-z0-9+/=]+)", html):
        try:
            parts.append(base64.b64decode(blob).decode("utf-8", "ignore"))
        except ValueError:
            continue
    return "\n".join(parts)


@pytest.mark.slow
def test_parallel_jobs_and_report_plumbing(tmp_path):
    from mlflow import MlflowClient

    (tmp_path / "Snakefile").write_text(SNAKEFILE.format(root=ROOT, stand_in=repr(STAND_IN_FIGURES)))
    (tmp_path / "job.py").write_text(JOB)
    config = {
        "seed": 3,
        "tracking": {"uri": None, "artifact_root": None, "experiment_prefix": "scorebridge", "on_error": "fail"},
        "sr": {"small": {"era5": "x"}, "large": {"era5": "y"}},
        "bridge": {"lv": {"cells": "c"}, "ou": {"cells": "d"}},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    env = {"CDSAPI_KEY": CDS_KEY, "MLFLOW_TRACKING_URI": ""}
    proc = run_snakemake("--cores", "4", "--jobs", "4", cwd=tmp_path, env=env, timeout=900)
    assert "Finished job" in proc.stderr + proc.stdout

    # every run in its experiment, one invocation
    info = json.loads((tmp_path / "results" / "mlflow" / "experiments.json").read_text())
    assert info["uri"] == f"sqlite:///{(tmp_path / 'results' / 'mlflow' / 'mlflow.db').resolve()}"
    client = MlflowClient(info["uri"])
    invocations = set()
    for kind, names in (("sr", ["small", "large"]), ("bridge", ["lv", "ou"])):
        for name in names:
            (run,) = client.search_runs([info["experiments"][kind][name]])
            assert run.data.tags["scorebridge.rule"] == f"{kind}_evaluate" and run.info.status == "FINISHED"
            assert (
                run.data.params["seed"] == "3" and len(client.get_metric_history(run.info.run_id, "train/loss")) == 50
            )
            assert run.data.metrics["rmse/t/850"] == 1.25
            figs = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "figures")}
            assert figs == {f"{f}.png" for f in STAND_IN_FIGURES[kind]}
            invocations.add(run.data.tags["scorebridge.invocation"])
    assert len(invocations) == 1 and len(invocations.pop()) == 32  # the Snakefile's per-invocation id

    # the report: every figure and metrics table, captioned
    run_snakemake("--report", "report.html", cwd=tmp_path, env=env, timeout=600)
    html = (tmp_path / "report.html").read_text()
    text = report_payload(html)
    for kind, names, figs in (
        ("sr", ["small", "large"], STAND_IN_FIGURES["sr"]),
        ("bridge", ["lv", "ou"], STAND_IN_FIGURES["bridge"]),
    ):
        for name in names:
            for fig in figs:
                assert f"results/{kind}/{name}/figures/{fig}.png" in text, (
                    f"{kind}/{name}/{fig}.png missing from the report"
                )
            assert f"results/{kind}/{name}/metrics.html" in text
    for caption in (
        "one posterior sample (member 0) and the ensemble spread",
        "Radially averaged power spectra",
        "Trajectories drawn from the bridge fitted",
        "1-Wasserstein distance between the held-out cells",
        "Metrics of super-resolution experiment",
        "Metrics of Schrödinger-bridge experiment",
        "multi-marginal Schrödinger bridges",
    ):
        assert caption in text, f"caption text '{caption}' missing from the report"
    assert CDS_KEY not in text
    # the metrics table itself: pivoted metric columns over variable/level rows
    table = (tmp_path / "results" / "sr" / "small" / "metrics.html").read_text()
    assert "<th>crps</th><th>rmse</th>" in table and "<td>t/850</td><td>0.5</td><td>1.25</td>" in table


@pytest.mark.slow
def test_real_workflow_parallel_tracking_and_report(tmp_path):
    """The real DAG on config/test.yaml with 4 parallel jobs into a fresh SQLite store."""
    test_config = ROOT / "config" / "test.yaml"
    if not test_config.exists():
        pytest.skip("config/test.yaml (the tiny test configuration) does not exist yet")
    from mlflow import MlflowClient

    env = {"CDSAPI_KEY": CDS_KEY, "MLFLOW_TRACKING_URI": ""}
    run_snakemake(
        "-s",
        str(ROOT / "Snakefile"),
        "-d",
        str(tmp_path),
        "--configfile",
        str(test_config),
        "--cores",
        "4",
        "--jobs",
        "4",
        cwd=tmp_path,
        env=env,
        timeout=1800,
    )
    cfg = yaml.safe_load(test_config.read_text())
    info = json.loads((tmp_path / "results" / "mlflow" / "experiments.json").read_text())
    client = MlflowClient(info["uri"])
    rules = {"sr": ["sr_train", "sr_sample", "sr_evaluate"], "bridge": ["bridge_fit", "bridge_evaluate"]}
    for kind in ("sr", "bridge"):
        for name in cfg.get(kind) or {}:
            runs = client.search_runs([info["experiments"][kind][name]])
            by_rule = {r.data.tags.get("scorebridge.rule"): r for r in runs}
            assert set(rules[kind]) <= set(by_rule), f"{kind}/{name}: runs of {sorted(by_rule)}"
            for rule in rules[kind]:
                r = by_rule[rule]
                assert r.info.status == "FINISHED" and r.data.params, f"{kind}/{name}/{rule}"
                assert json.loads(r.data.tags["scorebridge.wildcards"]) == {"experiment": name}
            ev = by_rule[f"{kind}_evaluate"]
            assert ev.data.metrics, f"{kind}/{name}: no metrics logged"
            arts = {a.path for a in client.list_artifacts(ev.info.run_id)}
            assert "figures" in arts and "metrics.json" in arts, arts
            assert not (tmp_path / "results" / "mlflow" / "pending").exists()
    # the report as a zip: report/report.html and every result under report/data/
    run_snakemake(
        "-s",
        str(ROOT / "Snakefile"),
        "-d",
        str(tmp_path),
        "--configfile",
        str(test_config),
        "--report",
        "report.zip",
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    with zipfile.ZipFile(tmp_path / "report.zip") as archive:
        html = archive.read("report/report.html").decode()
        stored = {name: archive.read(name) for name in archive.namelist()}
    text = report_payload(html)
    figures = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "results").glob("*/*/figures/*.png"))
    assert figures, "the workflow made no figures"
    missing = [f for f in figures if f not in text]
    assert not missing, f"figures missing from the report: {missing}"
    for kind in ("sr", "bridge"):
        for name in cfg.get(kind) or {}:
            assert f"results/{kind}/{name}/metrics.html" in text
    assert CDS_KEY not in text

    # every figure the rules declare was written, and nothing else
    declared = declared_figures()
    expected = sorted(
        f"results/{kind}/{name}/figures/{fig}.png"
        for kind in ("sr", "bridge")
        for name in cfg.get(kind) or {}
        for fig in declared[kind]
    )
    assert figures == expected, f"written {figures}, declared {expected}"
    # each in the report with its own caption (workflow/report/<kind>/<figure>.rst), labelled, with the file itself
    results = report_results(html)
    captions: dict[tuple[str, str], str] = {}
    for f in figures:
        _, kind, name, _, png = f.split("/")
        fig = png[: -len(".png")]
        entry = results[f]
        title = re.match(r"\*\*(.+?)\*\*", (ROOT / "workflow" / "report" / kind / f"{fig}.rst").read_text()).group(1)
        assert f"<strong>{title}</strong>" in entry["caption"] and f"figures/{fig}.png" in entry["caption"], (
            f,
            entry["caption"][:200],
        )
        assert name in entry["caption"], f"{f}: the caption does not name the experiment"
        assert entry["labels"] == {"experiment": name, "figure": fig}, entry["labels"]
        assert stored[f"report/{entry['data_uri']}"] == (tmp_path / f).read_bytes(), f
        assert entry["job_properties"]["rule"] == ("sr_train" if fig == "training_loss" else f"{kind}_evaluate"), f
        captions[(name, fig)] = entry["caption"].replace(name, "")
    for name in {n for n, _ in captions}:
        mine = [c for (n, _), c in captions.items() if n == name]
        assert len(set(mine)) == len(mine), f"{name}: figures share a caption (a generic fallback?)"

    # outputs that describe themselves
    check_outputs_describe_themselves(tmp_path, cfg)


def declared_figures() -> dict[str, list[str]]:
    """The figures each family's rules declare (workflow/rules/common.smk)."""
    text = (ROOT / "workflow" / "rules" / "common.smk").read_text()
    lists = {
        name: re.findall(r'"(\w+)"', body)
        for name, body in re.findall(r"^(\w+_FIGURES) = \[(.*?)\]$", text, flags=re.M | re.S)
    }
    return {"sr": lists["SR_TRAIN_FIGURES"] + lists["SR_EVALUATE_FIGURES"], "bridge": lists["BRIDGE_EVALUATE_FIGURES"]}


def report_results(html: str) -> dict:
    """The report's result records (`var results = {path: {caption, labels, data_uri, ...}}`)."""
    start = html.index("var results = {") + len("var results = ")
    return json.JSONDecoder().raw_decode(html[start:])[0]


def check_outputs_describe_themselves(root: Path, cfg: dict) -> None:
    """CF attributes of samples.zarr and the IGRA store; cell and feature names end to end."""
    import anndata
    import cf_xarray  # noqa: F401 (the .cf accessor)
    import xarray as xr

    for name in cfg.get("sr") or {}:
        s = xr.open_zarr(root / "results" / "sr" / name / "samples.zarr", consolidated=False)
        assert s.attrs["Conventions"] == "CF-1.10"
        assert s.cf["realization"].name == "member" and s.cf.bounds["latitude_coarse"] == ["latitude_coarse_bounds"]
        for var in s.variables.values():
            assert var.attrs.get("long_name"), var.name
        for v in {v for v, _ in json.loads(s.attrs["channels"])}:
            assert s[v].attrs["units"] and s[v].attrs["standard_name"] == s[f"{v}_mean"].attrs["standard_name"]
            assert s[f"{v}_mean"].attrs["cell_methods"] == "realization: mean"
            assert s[f"{v}_spread"].attrs["cell_methods"] == "realization: standard_deviation"
    for name in cfg.get("igra") or {}:
        obs = xr.open_zarr(root / "results" / "data" / "igra" / f"{name}.zarr", consolidated=False)
        snd = xr.open_zarr(root / "results" / "data" / "igra" / f"{name}.zarr", group="soundings", consolidated=False)
        assert obs.attrs["featureType"] == "profile" and snd["nlevels"].attrs["sample_dimension"] == "obs"
        assert snd.cf.cf_roles == {"profile_id": ["sounding_id"]} and int(snd["nlevels"].sum()) == obs.sizes["obs"]
        assert obs["temperature"].attrs["standard_name"] == "air_temperature" and obs["pressure"].attrs["units"] == "Pa"
    for name, entry in (cfg.get("bridge") or {}).items():
        cells = xr.open_zarr(root / "results" / "data" / "cells" / f"{entry['cells']}.zarr", consolidated=False)
        features = [str(f) for f in cells["feature"].values]
        cell_names = {str(c) for c in cells["cell"].values}
        pred = xr.open_zarr(root / "results" / "bridge" / name / "predictions.zarr", consolidated=False)
        assert [str(f) for f in pred["feature"].values] == features
        observed = pred["method"].values.astype(str) == "observed"
        assert observed.any() and {str(c) for c in pred["cell"].values[observed]} <= cell_names
        assert not any(str(c) for c in pred["cell"].values[~observed])
        ad = anndata.read_h5ad(root / "results" / "bridge" / name / "predictions.h5ad")
        assert list(ad.var_names) == features
        assert set(ad.obs.loc[ad.obs["kind"] == "observed", "cell"].astype(str)) <= cell_names
