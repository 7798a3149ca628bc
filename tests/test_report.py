"""`snakemake --report`: every figure and metrics table, captioned; the jobs behind them
ran in parallel and logged to MLflow.

Two levels:
- the tracking/report plumbing of this repository (rules tracking_init, *_metrics_table,
  common.smk, the captions in workflow/report/) driven by a small evaluate stand-in that
  logs through `tracked_run` and `save_figure`, with 4 parallel jobs; always runs;
- the real workflow on `config/test.yaml` with 4 parallel jobs (runs once that file and
  the model rules exist; skipped with the reason otherwise).
"""

from __future__ import annotations

import base64
import json
import re
import textwrap
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, run_snakemake

CDS_KEY = "161803:3b2a1c0d-report-env-secret-9e8f"

JOB = '''
import argparse, os
import numpy as np
from scorebridge.config import parse_spec
from scorebridge.io import write_json
from scorebridge.plots import new_figure, save_figure
from scorebridge.tracking import tracked_run

ap = argparse.ArgumentParser()
for a in ("--kind", "--experiment", "--spec", "--experiments", "--out", "--figures", "--data"):
    ap.add_argument(a)
a = ap.parse_args()
spec = parse_spec(a.spec)
rng = np.random.default_rng(spec["seed"])
with tracked_run(experiments=a.experiments, kind=a.kind, experiment=a.experiment, rule=f"{a.kind}_evaluate",
                 wildcards={"experiment": a.experiment}, spec=spec, datasets={"data": a.data}) as run:
    for step in range(50):
        run.log_metrics({"train/loss": float(np.exp(-step / 10))}, step=step)
    names = ["maps", "power_spectra"] if a.kind == "sr" else ["trajectories", "distances"]
    for name in names:
        fig, ax = new_figure()
        ax.plot(rng.standard_normal(20).cumsum())
        ax.set_title(f"{name} {a.experiment}")
        save_figure(fig, os.path.join(a.figures, f"{name}.png"), run=run)
    metrics = {"rmse": {"t": {"850": 1.25, "500": 2.5}}, "crps": {"t": {"850": 0.5, "500": 1.0}}, "wall_time_s": 3.0}
    run.log_metrics({"rmse/t/850": 1.25, "rmse/t/500": 2.5, "crps/t/850": 0.5, "crps/t/500": 1.0})
    write_json(a.out, metrics)
    run.log_artifact(a.out)
'''

SNAKEFILE = '''
# The repository's tracking and report rules, with an evaluate stand-in per model family.
ROOT = "{root}"


configfile: "config.yaml"


report: f"{{ROOT}}/workflow/report/workflow.rst"


include: f"{{ROOT}}/workflow/rules/common.smk"
include: f"{{ROOT}}/workflow/rules/tracking.smk"


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
            figures=report(
                directory(f"results/{{_kind}}/{{{{experiment}}}}/figures"),
                patterns=["{{name}}.png"],
                caption=f"{{ROOT}}/workflow/report/{{_kind}}_figures.rst",
                category=_category,
                subcategory="{{experiment}}",
            ),
        params:
            kind=_kind,
            spec=lambda w, kind=_kind: spec_json(kind, w.experiment),
        shell:
            "python job.py --kind {{params.kind}} --experiment {{wildcards.experiment}} --spec {{params.spec:q}} "
            "--experiments {{input.experiments}} --data {{input.data}} --out {{output.metrics}} --figures {{output.figures}}"
'''


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

    (tmp_path / "Snakefile").write_text(SNAKEFILE.format(root=ROOT))
    (tmp_path / "job.py").write_text(JOB)
    config = {"seed": 3, "tracking": {"uri": None, "artifact_root": None, "experiment_prefix": "scorebridge", "on_error": "fail"},
              "sr": {"small": {"era5": "x"}, "large": {"era5": "y"}}, "bridge": {"lv": {"cells": "c"}, "ou": {"cells": "d"}}}
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
            assert run.data.params["seed"] == "3" and len(client.get_metric_history(run.info.run_id, "train/loss")) == 50
            assert run.data.metrics["rmse/t/850"] == 1.25
            figs = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "figures")}
            assert figs == ({"maps.png", "power_spectra.png"} if kind == "sr" else {"trajectories.png", "distances.png"})
            invocations.add(run.data.tags["scorebridge.invocation"])
    assert len(invocations) == 1 and len(invocations.pop()) == 32  # the Snakefile's per-invocation id

    # the report: every figure and metrics table, captioned
    run_snakemake("--report", "report.html", cwd=tmp_path, env=env, timeout=600)
    html = (tmp_path / "report.html").read_text()
    text = report_payload(html)
    for kind, names, figs in (("sr", ["small", "large"], ["maps", "power_spectra"]), ("bridge", ["lv", "ou"], ["trajectories", "distances"])):
        for name in names:
            for fig in figs:
                assert f"results/{kind}/{name}/figures/{fig}.png" in text, f"{kind}/{name}/{fig}.png missing from the report"
            assert f"results/{kind}/{name}/metrics.html" in text
    for caption in ("Truth, coarse input, one posterior sample", "Radially averaged power spectra",
                    "Trajectories drawn from the fitted bridge", "Metrics of super-resolution experiment",
                    "Metrics of Schrödinger-bridge experiment", "multi-marginal Schrödinger bridges"):
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
    run_snakemake("-s", str(ROOT / "Snakefile"), "-d", str(tmp_path), "--configfile", str(test_config), "--cores", "4", "--jobs", "4",
                  cwd=tmp_path, env=env, timeout=1800)
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
    run_snakemake("-s", str(ROOT / "Snakefile"), "-d", str(tmp_path), "--configfile", str(test_config), "--report", "report.html",
                  cwd=tmp_path, env=env, timeout=600)
    text = report_payload((tmp_path / "report.html").read_text())
    figures = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "results").glob("*/*/figures/*.png"))
    assert figures, "the workflow made no figures"
    missing = [f for f in figures if f not in text]
    assert not missing, f"figures missing from the report: {missing}"
    for kind in ("sr", "bridge"):
        for name in cfg.get(kind) or {}:
            assert f"results/{kind}/{name}/metrics.html" in text
    assert CDS_KEY not in text
