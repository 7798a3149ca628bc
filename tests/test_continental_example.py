"""config/examples/continental.yaml (issue 13): a continental domain trained on 4 GPUs under
DDP through the SLURM profile's resources. It validates against the schema, its keys are
documented, and the dry run plans its jobs: sr_train asks SLURM for 4 GPUs and starts
torchrun with 4 processes, sampling asks for one GPU (no cluster, GPU or network needed)."""

from __future__ import annotations

import re
import shutil

import yaml

from conftest import ROOT, run_snakemake

EXAMPLE = ROOT / "config" / "examples" / "continental.yaml"


def test_continental_example_validates_and_is_documented():
    from scorebridge.config import validate_config
    from scorebridge.sr.options import resolve_spec

    config = yaml.safe_load(EXAMPLE.read_text())
    readme = (ROOT / "config/README.md").read_text()
    for section in config:
        assert f"## {section}" in readme or section == "seed", section
    validate_config(config, ROOT / "src/scorebridge/schemas/config.schema.yaml")  # fills the defaults in
    exp = resolve_spec(config["sr"]["europe"], where="sr.europe")
    train = exp.train
    assert (
        train.crop == 128
        and train.device == "cuda"
        and train.precision == "bf16"
        and train.channels_last
        and train.compile
    )
    assert train.batch_size % config["resources"]["sr_train"]["gpus"] == 0  # the global batch splits over the GPUs
    north, west, south, east = config["era5"]["europe"]["area"]
    assert (round((north - south) / 0.25) + 1, round((east - west) / 0.25) + 1) == (256, 512)
    assert exp.sample.patch is None  # whole-domain sampling; the patch alternative is commented


def test_continental_example_plans_multi_gpu_training(tmp_path):
    shutil.copy(EXAMPLE, tmp_path / "continental.yaml")
    proc = run_snakemake(
        "-s",
        ROOT / "Snakefile",
        "-d",
        tmp_path,
        "-n",
        "-p",
        "--configfile",
        tmp_path / "continental.yaml",
        "--replace-workflow-config",
    )
    out = proc.stdout
    jobs = {}
    for rule, resources in re.findall(
        r"^rule (\w+):\n(?:    (?!resources).*\n)*?    resources: (.*)$", out, flags=re.M
    ):
        jobs[rule] = dict(item.split("=", 1) for item in resources.split(", "))
    assert {"era5_ingest", "sr_train", "sr_sample", "sr_evaluate"} <= set(jobs)
    assert "era5_fetch" not in jobs  # arco is read lazily by the ingestion
    assert (
        jobs["sr_train"]["gpu"] == "4"
        and jobs["sr_train"]["mem_mb"] == "128000"
        and jobs["sr_train"]["cpus_per_task"] == "32"
    )
    assert jobs["sr_sample"]["gpu"] == "1"
    train = [ln for ln in out.splitlines() if "sr-train" in ln]
    assert train and "-m torch.distributed.run --standalone --nproc_per_node 4 -m scorebridge sr-train" in train[0]
