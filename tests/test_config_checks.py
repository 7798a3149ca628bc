"""Config errors that name the key the user wrote, in the file and line they wrote it
(issue 12 items 8, 9 and 14).

- a name that refers to an undefined dataset (`sr.x.era5: nope`) names that key and the
  defined names, at the config check (not `era5.nope` inside a traceback);
- an empty, malformed or non-mapping config file names the file and line;
- `debias: bootstrap` without `learn: true`, a `holdout` outside the snapshots,
  `train_fraction: 1.0` (no held-out times) and `max_cells` below `min_cells` are config
  errors before anything runs.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, run_cli, run_snakemake
from scorebridge.config import check_references, load_config, locate_key, read_config_file, validate_config
from scorebridge.errors import ConfigError

TEST_CONFIG = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())


def _config(**changes) -> dict:
    """config/test.yaml with `changes` {"dotted.key": value} applied."""
    cfg = copy.deepcopy(TEST_CONFIG)
    for key, value in changes.items():
        node = cfg
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return cfg


def _error(cfg: dict) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    return err.value


# ----------------------------------------------------------------- references


@pytest.mark.parametrize(
    "key, defined",
    [
        ("sr.small.era5", "era5"),
        ("sr.small.igra", "igra"),
        ("bridge.ou.cells", "cells"),
        ("igra.small.collocate.era5", "era5"),
        ("igra.small.synthetic.era5", "era5"),
    ],
)
def test_undefined_name_names_the_key_and_the_defined_names(key, defined):
    err = _error(_config(**{key: "nope"}))
    assert err.key == key
    names = sorted(TEST_CONFIG[defined])
    assert f"'nope' is not a defined {defined} dataset" in str(err) and f"defined: {names}" in str(err)


def test_no_dataset_of_a_kind_defined():
    cfg = _config()
    del cfg["cells"]
    err = _error(cfg)
    assert err.key == "bridge.ou.cells" and "no cells dataset is defined" in str(err)


def test_check_references_alone_and_a_valid_config_passes():
    check_references(validate_config(_config()))  # config/test.yaml refers to defined names only
    for f in ("config.yaml", "test.yaml", "examples/shared-data.yaml"):
        load_config(ROOT / "config" / f)


# ----------------------------------------------------------------- entry rules


def test_debias_bootstrap_needs_learn():
    err = _error(_config(**{"bridge.ou.model.reference.sigma": {"debias": "bootstrap"}}))
    assert err.key == "bridge.ou.model.reference.sigma.debias"
    assert "learn: true" in str(err)
    validate_config(_config(**{"bridge.ou.model.reference.sigma": {"debias": "bootstrap", "learn": True}}))


@pytest.mark.parametrize("holdout", [[4], [[1], [0, 9]]])
def test_holdout_outside_simulated_snapshots(holdout):
    err = _error(_config(**{"bridge.ou.evaluate.holdout": holdout}))
    assert err.key == "bridge.ou.evaluate.holdout"
    assert "4 snapshots" in str(err) and "cells.ou" in str(err)


def test_loo_with_two_simulated_snapshots_has_nothing_to_predict():
    err = _error(_config(**{"cells.ou.simulate.times": [0, 1], "bridge.ou.evaluate.holdout": "loo"}))
    assert err.key == "bridge.ou.evaluate.holdout" and "nothing to predict" in str(err)


def test_max_cells_below_min_cells():
    err = _error(_config(**{"bridge.ou.max_cells": 5}))
    assert err.key == "bridge.ou.max_cells" and "min_cells" in str(err)


def test_simulated_snapshots_below_min_cells():
    err = _error(_config(**{"cells.ou.simulate.n_cells": [60, 5, 60, 60]}))
    assert err.key == "bridge.ou.min_cells" and "simulates 5 cells" in str(err) and "min_cells = 10" in str(err)
    validate_config(
        _config(**{"cells.ou.simulate.n_cells": [60, 5, 60, 60], "bridge.ou.min_cells": 5, "cells.ou.min_cells": 5})
    )


def test_train_fraction_one_leaves_no_held_out_times():
    err = _error(_config(**{"sr.small.train.split": {"train_fraction": 1.0}}))
    assert err.key == "sr.small.train.split.train_fraction"
    assert "no held-out times" in str(err)
    # with training dates the fraction is not used
    validate_config(_config(**{"sr.small.train.split": {"train_fraction": 1.0, "train_end": "2020-01-02"}}))


# ----------------------------------------------------------------- files and lines


def test_locate_key_finds_the_line(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("seed: 0\nsr:\n  small:\n    era5: nope   # here\n    sample: {members: x}\n")
    assert locate_key([f], "sr.small.era5") == (f, 4)
    assert locate_key([f], "sr.small.sample.members") == (f, 5)
    assert locate_key([f], "sr.small.train.steps") == (f, 3)  # not written: the nearest entry that is
    assert locate_key([f], "bridge.x") is None


def test_validation_error_names_the_file_and_line(tmp_path):
    f = tmp_path / "c.yaml"
    cfg = _config(**{"sr.small.era5": "nope"})
    f.write_text(yaml.safe_dump(cfg, sort_keys=False))
    line = next(i for i, text in enumerate(f.read_text().splitlines(), 1) if "era5: nope" in text)
    with pytest.raises(ConfigError) as err:
        load_config(f)
    assert str(err.value).startswith(f"config file {f}, line {line}: config key 'sr.small.era5'")


@pytest.mark.parametrize(
    "text, line, message",
    [
        ("", 1, "empty"),
        ("# only a comment\n", 1, "empty"),
        ("seed: 0\nera5:\n  small: [\n", 3, "the file ends inside an open bracket"),
        ("seed: 0\nera5:\n  small: {source: synthetic\nsr: {}\n", 4, "not valid YAML"),
        ("seed: 0\nera5: {small: {source: 'synthetic}}\n", 2, "it opens on this line and is never closed"),
        ("seed: 0\n\tera5: {}\n", 2, "spaces, not tabs"),
        ("sr: {}\nseed: 0\nsr: {}\n", 3, "config key 'sr': given twice (lines 1 and 3)"),
        ("- era5\n- sr\n", 1, "a list"),
        ("just text\n", 1, "a string"),
    ],
)
def test_malformed_file_names_the_file_and_line(tmp_path, text, line, message):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as err:
        read_config_file(f)
    assert str(err.value).startswith(f"config file {f}, line {line}: "), str(err.value)
    assert message in str(err.value)


# ----------------------------------------------------------------- real snakemake runs


def _dry_run(workdir: Path, *args: str):
    proc = run_snakemake(
        "-s", str(ROOT / "Snakefile"), "-d", str(workdir), "-n", *args, cwd=workdir, check=False, timeout=300
    )
    return proc.returncode, proc.stdout + proc.stderr


def test_snakemake_names_an_undefined_reference(tmp_path):
    cfg = _config(**{"sr.small.era5": "nope"})
    f = tmp_path / "my.yaml"
    f.write_text(yaml.safe_dump(cfg, sort_keys=False))
    line = next(i for i, text in enumerate(f.read_text().splitlines(), 1) if "era5: nope" in text)
    rc, out = _dry_run(tmp_path, "--configfile", str(f), "--replace-workflow-config")
    assert rc != 0
    assert (
        f"config file {f}, line {line}: config key 'sr.small.era5': 'nope' is not a defined era5 dataset; defined: ['small']"
        in out
    ), out
    assert "InputFunctionException" not in out and "era5.nope" not in out


@pytest.mark.parametrize(
    "text, line, message",
    [("", 1, "empty"), ("seed: 0\nera5:\n  small: [\n", 3, "not valid YAML"), ("- era5\n- sr\n", 1, "a list")],
)
def test_snakemake_names_the_workflow_config_file_and_line(tmp_path, text, line, message):
    """The workflow's own config/config.yaml (read by the Snakefile) when malformed."""
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text(text)
    rc, out = _dry_run(tmp_path)
    assert rc != 0
    assert re.search(rf"config file config/config.yaml, line {line}: [^\n]*{message}", out), out


@pytest.mark.parametrize("text, line", [("", 1), ("seed: 0\nera5:\n  small: [\n", 3), ("- era5\n", 1)])
def test_check_config_names_a_malformed_configfile(tmp_path, text, line):
    """Snakemake reads `--configfile` files itself, before the workflow, and says only
    "Config file is not valid JSON or YAML" / "...with keys at top level"; `scorebridge
    check-config` (run first by `make run` / `make dry-run`) names the file and line."""
    f = tmp_path / "my.yaml"
    f.write_text(text)
    proc = run_cli("check-config", f, check=False)
    assert proc.returncode == 1
    assert f"config file {f}, line {line}: " in proc.stderr, proc.stderr
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(TEST_CONFIG))
    assert run_cli("check-config", good).returncode == 0


def test_check_config_merges_files_as_snakemake_does(tmp_path):
    base, extra = tmp_path / "a.yaml", tmp_path / "b.yaml"
    base.write_text(yaml.safe_dump(TEST_CONFIG, sort_keys=False))
    extra.write_text("bridge:\n  ou:\n    model:\n      reference:\n        sigma: {debias: bootstrap}\n")
    proc = run_cli("check-config", base, extra, check=False)
    assert proc.returncode == 1
    assert f"config file {extra}, line 5: config key 'bridge.ou.model.reference.sigma.debias'" in proc.stderr, (
        proc.stderr
    )


def test_snakemake_refuses_train_fraction_one_before_running(tmp_path):
    cfg = _config(**{"sr.small.train.split": {"train_fraction": 1.0}})
    f = tmp_path / "my.yaml"
    f.write_text(yaml.safe_dump(cfg, sort_keys=False))
    rc, out = _dry_run(tmp_path, "--configfile", str(f), "--replace-workflow-config")
    assert rc != 0 and "config key 'sr.small.train.split.train_fraction'" in out and "no held-out times" in out, out
    assert not (tmp_path / "results").exists()
