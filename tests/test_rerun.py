"""A changed config key reruns exactly the rules it affects (Snakemake's params trigger).

Each rule passes only the config keys its command reads (`spec_json(..., only=, drop=)`
in workflow/rules/common.smk), so Snakemake's recorded params change exactly for the
rules a key affects; their downstream jobs rerun because their inputs change.

The whole-DAG checks run on a completed workflow whose outputs were marked up to date
with `snakemake --touch` (which records the same metadata as a real run: params, code,
input set), so that every rule can be checked without training a model; one check then
reruns real jobs.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, run_snakemake

DEFAULT_CONFIG = ROOT / "config" / "config.yaml"
MODEL_RULES = {
    "sr_train",
    "sr_sample",
    "sr_evaluate",
    "sr_metrics_table",
    "bridge_fit",
    "bridge_evaluate",
    "bridge_metrics_table",
}


def smk(workdir: Path, config: Path, *args: str, check: bool = True):
    return run_snakemake(
        "-s",
        str(ROOT / "Snakefile"),
        "-d",
        str(workdir),
        "--configfile",
        str(config),
        *args,
        cwd=workdir,
        check=check,
        timeout=600,
    )


def planned_rules(workdir: Path, config: Path) -> tuple[set[str], set[str]]:
    """(rules a dry run would execute, the rules among them triggered by their own params
    rather than by an upstream job), with every rerun trigger on."""
    proc = smk(workdir, config, "-n", "--rerun-triggers", "mtime", "params", "input", "software-env", "code")
    out = proc.stdout + proc.stderr
    if "Nothing to be done" in out:
        return set(), set()
    jobs = re.findall(r"^rule (\w+):\n(?:    .*\n)*?    reason: (.*)$", out, flags=re.M)
    assert jobs, f"could not read the jobs from the dry run:\n{out}"
    planned = {rule for rule, _ in jobs} - {"all"}
    params = {rule for rule, reason in jobs if reason.startswith("Params have changed")}
    return planned, params


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def mark_done(workdir: Path, config: Path) -> None:
    """Create every output of the DAG (directories for directory outputs) and record
    it as up to date with `snakemake --touch`, which writes the run's metadata."""
    proc = smk(workdir, config, "--summary")
    rows = [line.split("\t") for line in proc.stdout.splitlines()[1:] if "\t" in line]
    assert rows, proc.stdout + proc.stderr
    dirs = set(
        re.findall(
            r'directory\(f"\{RESULTS\}/([^"]+)"\)',
            "".join(p.read_text() for p in (ROOT / "workflow" / "rules").glob("*.smk")),
        )
    )
    dir_patterns = [re.compile("results/" + re.sub(r"\\\{\\\{\w+\\\}\\\}", r"[^/]+", re.escape(d)) + "$") for d in dirs]
    for row in rows:
        out = workdir / row[0]
        if any(p.match(row[0]) for p in dir_patterns):
            out.mkdir(parents=True, exist_ok=True)
        else:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.touch()
    smk(workdir, config, "--touch", "--forceall", "--cores", "1")


@pytest.fixture(scope="module")
def done_workflow(tmp_path_factory):
    """The default config's whole DAG, marked complete."""
    workdir = tmp_path_factory.mktemp("rerun_dag")
    base = yaml.safe_load(DEFAULT_CONFIG.read_text())
    config = write_config(workdir / "config.yaml", base)
    mark_done(workdir, config)
    return workdir, base


def test_every_rule_has_cluster_resources():
    """Every rule reads its resources from the config (resources.schema.yaml names it)."""
    proc = run_snakemake("--list-rules", "--configfile", str(DEFAULT_CONFIG))
    rules = set(proc.stdout.split()) - {"all"}
    schema = yaml.safe_load((ROOT / "src" / "scorebridge" / "schemas" / "resources.schema.yaml").read_text())
    assert rules <= set(schema["propertyNames"]["enum"]), rules - set(schema["propertyNames"]["enum"])
    text = "".join(p.read_text() for p in (ROOT / "workflow" / "rules").glob("*.smk"))
    for rule in rules:
        block = re.search(rf"^rule {rule}:\n(.*?)(?=^rule |\Z)", text, flags=re.M | re.S).group(1)
        assert f'cluster_resources(\n            "{rule}"' in block or f'cluster_resources("{rule}"' in block, rule


def test_unchanged_config_nothing_to_do(done_workflow):
    workdir, base = done_workflow
    config = write_config(workdir / "same.yaml", base)
    assert planned_rules(workdir, config) == (set(), set())


def _set(config: dict, dotted: str, value) -> dict:
    config = copy.deepcopy(config)
    node = config
    *path, last = dotted.split(".")
    for key in path:
        node = node.setdefault(key, {})
    node[last] = value
    return config


BRIDGE = {"bridge_fit", "bridge_evaluate", "bridge_metrics_table"}
SR_AFTER_SAMPLE = {"sr_sample", "sr_evaluate", "sr_metrics_table"}


@pytest.mark.parametrize(
    "changes, roots, planned",
    [
        (  # preprocessing keeps the simulation; a sampling setting keeps the trained prior;
            # cluster resources are not provenance
            {
                "cells.lotka_volterra.preprocess.n_pcs": 3,
                "sr.default.sample.members": 3,
                "resources.sr_train.runtime": 5,
                "resources.default.mem_mb": 1000,
            },
            {"cells_ingest", "sr_sample"},
            {"cells_ingest", "sr_sample", "sr_evaluate", "sr_metrics_table"} | BRIDGE,
        ),
        (  # the simulator's seed: the time course and what reads it; the collocation
            # tolerance: the soundings and what is conditioned on them, not the prior
            {"cells.lotka_volterra.simulate.seed": 7, "igra.default.collocate.tolerance_hours": 1},
            {"cells_simulate", "igra_collocate"},
            {"cells_simulate", "cells_ingest", "igra_collocate"} | BRIDGE | SR_AFTER_SAMPLE,
        ),
        (  # the global seed: the experiments that take it, none of the data
            {"seed": 1},
            {"sr_train", "bridge_fit"},
            {"sr_train"} | SR_AFTER_SAMPLE | BRIDGE,
        ),
    ],
    ids=["preprocess+sample+resources", "simulate-seed+collocate", "global-seed"],
)
def test_changed_key_reruns_exactly_affected_rules(done_workflow, request, changes, roots, planned):
    workdir, base = done_workflow
    changed = base
    for key, value in changes.items():
        changed = _set(changed, key, value)
    config = write_config(workdir / f"{request.node.callspec.id}.yaml", changed)
    got_planned, got_params = planned_rules(workdir, config)
    assert got_params == roots
    assert got_planned == planned


@pytest.mark.slow
def test_changed_key_real_rerun(tmp_path):
    """Real jobs: a preprocessing key reruns cells_ingest and keeps the simulation."""
    config = {"cells": {"tiny": {"source": "simulate", "simulate": {"system": "lotka_volterra", "n_cells": 40}}}}
    cfg = write_config(tmp_path / "config.yaml", config)
    target = "results/data/cells/tiny.zarr"
    smk(tmp_path, cfg, "--cores", "2", target)
    raw = tmp_path / "results" / "raw" / "cells" / "tiny.npz"
    raw_mtime = raw.stat().st_mtime_ns

    cfg2 = write_config(tmp_path / "config2.yaml", _set(config, "cells.tiny.preprocess.n_pcs", 1))
    proc = smk(tmp_path, cfg2, "--cores", "2", target)
    out = proc.stdout + proc.stderr
    assert re.search(r"Finished jobid: \d+ \(Rule: cells_ingest\)", out), out
    assert "Rule: cells_simulate" not in out, out
    assert raw.stat().st_mtime_ns == raw_mtime
