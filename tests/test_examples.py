"""The example configs users copy: config/examples/*.yaml validate and plan the whole DAG,
and a user's config replaces the default experiments instead of adding to them."""

from __future__ import annotations

import re
import shutil

import pytest
import yaml

from conftest import ROOT, SHARED_DATA, run_snakemake


def _jobs(stdout: str) -> dict[str, int]:
    """The dry run's job-stats table: rule -> count."""
    table = stdout.split("Job stats:")[1].split("Reasons:")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)}


def _wildcards(stdout: str) -> set[str]:
    return set(re.findall(r"wildcards: (.+)", stdout))


@pytest.fixture
def example(tmp_path):
    """config/examples/shared-data.yaml with its ../shared/data paths pointed at the real
    sample files, in a working directory that also holds the default config/config.yaml."""
    text = (ROOT / "config/examples/shared-data.yaml").read_text()
    paths = re.findall(r"\.\./shared/data/([\w./-]+)", text)
    assert len(paths) == 4
    missing = [p for p in paths if not (SHARED_DATA / p).exists()]
    if missing:
        pytest.skip(f"real sample files {missing} not present under {SHARED_DATA}")
    (tmp_path / "example.yaml").write_text(text.replace("../shared/data", str(SHARED_DATA)))
    (tmp_path / "config").mkdir()
    shutil.copy(ROOT / "config/config.yaml", tmp_path / "config/config.yaml")
    return tmp_path


def test_shared_data_example_plans_only_its_own_experiments(example):
    args = ("-s", ROOT / "Snakefile", "-d", example, "-n", "--configfile", example / "example.yaml")
    out = run_snakemake(*args, "--replace-workflow-config").stdout
    jobs = _jobs(out)
    assert jobs["era5_ingest"] == 1 and jobs["igra_ingest"] == 1 and jobs["cells_ingest"] == 2
    assert jobs["sr_train"] == 1 and jobs["bridge_fit"] == 2 and jobs["bridge_evaluate"] == 2
    # real soundings without collocate.era5 are ingested but not collocated with some grid
    assert "igra_collocate" not in jobs and "era5_fetch" not in jobs
    wildcards = _wildcards(out)
    assert any("experiment=emt" in w for w in wildcards) and any("dataset=ens" in w for w in wildcards)
    assert not any("default" in w or "lotka_volterra" in w for w in wildcards)
    # without the flag (which `make run CONFIG=...` passes) Snakemake merges in the default config
    merged = run_snakemake(*args).stdout
    assert any("experiment=default" in w for w in _wildcards(merged))
    assert "--replace-workflow-config" in (ROOT / "Makefile").read_text()


def test_example_keys_are_documented():
    """Every top-level entry of the example is a section of config/README.md, and the
    example validates against the schema (the dry run above checks it with the files)."""
    from scorebridge.config import validate_config

    config = yaml.safe_load((ROOT / "config/examples/shared-data.yaml").read_text())
    readme = (ROOT / "config/README.md").read_text()
    for section in config:
        assert f"## {section}" in readme or section == "seed", section
    validate_config(config, ROOT / "src/scorebridge/schemas/config.schema.yaml")
    assert config["sr"]["ens"]["train"]["model"]["base"] == 16  # the example's value kept
    assert config["bridge"]["emt"]["baselines"]["otcfm"]["steps"] >= 1  # a default filled in
