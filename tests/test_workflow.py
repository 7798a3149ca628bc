"""The workflow's shape: lint, formatting, schema validation with defaults, dry run."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from conftest import ROOT, bin_path, run_snakemake
from scorebridge.config import load_config, validate_config
from scorebridge.errors import ConfigError


def test_snakemake_lint_clean():
    proc = run_snakemake("--lint", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Lints for" not in out, out


def test_snakefmt_clean():
    proc = subprocess.run(
        [bin_path("snakefmt"), "--check", "Snakefile", "workflow/rules"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_default_config_valid_and_defaults_filled():
    cfg = load_config(ROOT / "config" / "config.yaml")
    assert cfg["tracking"]["on_error"] == "warn"
    era5 = cfg["era5"]["default"]
    assert era5["chunks"]["time"] >= 1
    assert era5["synthetic"]["step_hours"] == 6  # a nested default
    assert cfg["igra"]["default"]["collocate"]["era5"] is None


@pytest.mark.parametrize(
    "mutate, key",
    [
        (lambda c: c.__setitem__("sed", 1), "<top level>"),
        (lambda c: c.__setitem__("seed", "abc"), "seed"),
        (lambda c: c["era5"]["default"].__setitem__("levels", ["high"]), "era5.default.levels[0]"),
        (lambda c: c["era5"]["default"].__setitem__("sorce", "cds"), "era5.default"),
        (lambda c: c["era5"]["default"].__setitem__("source", "ftp"), "era5.default.source"),
        (lambda c: c["tracking"].__setitem__("on_error", 3), "tracking.on_error"),
    ],
)
def test_bad_config_names_key(mutate, key):
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg.setdefault("tracking", {})
    mutate(cfg)
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert f"config key '{key}'" in str(err.value)


def test_dry_run_whole_dag():
    proc = run_snakemake("-n", "--forceall", "--quiet", "rules")
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", proc.stdout + proc.stderr, flags=re.M))
    for rule in [
        "era5_fetch",
        "era5_ingest",
        "igra_fetch",
        "igra_ingest",
        "igra_collocate",
        "cells_simulate",
        "cells_ingest",
        "tracking_init",
        "sr_train",
        "sr_sample",
        "sr_evaluate",
        "bridge_fit",
        "bridge_evaluate",
    ]:
        assert rule in counts, f"{rule} missing from the dry run:\n{proc.stdout}"


def test_snakemake_reports_bad_config_key():
    proc = run_snakemake("-n", "--config", "seed=abc", check=False)
    assert proc.returncode != 0
    assert "config key 'seed'" in proc.stdout + proc.stderr


def test_envs_match_lock():
    env = yaml.safe_load((ROOT / "envs" / "scorebridge.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    lock = (ROOT / "requirements.lock").read_text().splitlines()
    # self-contained (Snakemake builds it from a copy under .snakemake/conda/): the lock's pins inline
    assert pip == [line for line in lock if line and not line.startswith("#")], "run scripts/sync-conda-env.py"
    assert "torch==2.13.0" in lock
    assert all("==" in line for line in lock if line and not line.startswith("#")), "every lock line pins a version"
    for rule_file in (ROOT / "workflow" / "rules").glob("*.smk"):
        text = rule_file.read_text()
        assert len(re.findall(r"^rule ", text, flags=re.M)) == text.count("conda:"), (
            f"{rule_file.name}: every rule names its conda env"
        )
