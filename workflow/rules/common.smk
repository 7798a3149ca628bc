# Shared helpers of the workflow (config look-ups, CLI arguments, targets).
import json
import os
import shlex
import sys
import uuid

from snakemake_interface_executor_plugins.settings import DeploymentMethod

# One id per `snakemake` invocation, inherited by every job (locally and through sbatch),
# so that MLflow can group the runs of one invocation.
os.environ.setdefault("SCOREBRIDGE_INVOCATION", uuid.uuid4().hex)

RESULTS = "results"
ENV = "../../envs/scorebridge.yaml"
# This checkout's package sources (workflow/rules/../../src).
SRC = os.path.abspath(os.path.join(str(workflow.current_basedir), "..", "..", "src"))


def python_command():
    """The interpreter the jobs run, as a quoted shell word: the one Snakemake runs
    under (so `.venv/bin/snakemake` works without activating the environment and a bare
    `scorebridge` need not be on PATH). Under `--sdm conda` the rule's conda environment
    (envs/scorebridge.yaml: the dependencies) provides `python`, and this checkout's
    src/ is put on its PYTHONPATH."""
    if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method:
        return (
            f'env PYTHONPATH={shlex.quote(SRC)}"${{PYTHONPATH:+:$PYTHONPATH}}" python'
        )
    return shlex.quote(sys.executable)


# Every rule takes one as a param (`cli=SCOREBRIDGE`, or `python=PYTHON` for sr_train's
# launcher); as params (not globals in the shell command, which --lint flags) they are
# tracked, so a job reruns when its interpreter changes (another environment, --sdm conda).
PYTHON = python_command()
SCOREBRIDGE = f"{PYTHON} -m scorebridge"


def entry(section, name):
    """The config entry `config[section][name]`, with the global seed filled in."""
    try:
        spec = dict(config[section][name])
    except KeyError:
        raise ValueError(
            f"config key '{section}.{name}' is not defined; defined: {sorted(config.get(section, {}))}"
        )
    if spec.get("seed") is None and section in ("sr", "bridge"):
        spec["seed"] = config["seed"]
    return spec


def spec_json(section, name, only=None, drop=()):
    """The entry as compact JSON, passed to the CLI and tracked by Snakemake as a param.
    `only`/`drop` keep a rule's spec to the keys its command reads, so that a changed
    config key reruns exactly the rules it affects (--rerun-triggers params)."""
    spec = entry(section, name)
    if only is not None:
        spec = {k: v for k, v in spec.items() if k in only}
    spec = {k: v for k, v in spec.items() if k not in drop}
    return json.dumps(spec, sort_keys=True, separators=(",", ":"))


def res(rule_name, key, default):
    """A resource for a rule from `config.resources[rule]`, then
    `config.resources.default`, else the default."""
    resources = config.get("resources", {})
    for scope in (rule_name, "default"):
        value = resources.get(scope, {}).get(key)
        if value is not None:
            return value
    return default


# config `resources.<rule>.<key>` -> the resource name Snakemake and
# snakemake-executor-plugin-slurm read (sbatch -t, --mem, --cpus-per-task, --nodes, -p, -A, --gpus).
CLUSTER_RESOURCES = {
    "runtime": "runtime",
    "mem_mb": "mem_mb",
    "cpus": "cpus_per_task",
    "nodes": "nodes",
    "partition": "slurm_partition",
    "account": "slurm_account",
}


def uses_gpu(section, component):
    """Function of wildcards: False when the experiment's config says CPU
    (`<section>.<experiment>.<component>.device: cpu`), else True."""

    def decide(wildcards):
        spec = entry(section, wildcards.experiment)
        device = (spec.get(component) or {}).get("device") or spec.get("device")
        return str(device or "auto").lower() != "cpu"

    return decide


def cluster_resources(rule_name, gpus=0, gpu_when=None, **defaults):
    """A rule's resources, from `config.resources.<rule>`, then `config.resources.default`,
    then `defaults` (runtime in minutes, mem_mb, cpus, nodes, partition, account), named
    as the SLURM executor plugin reads them. `gpus` is the rule's default GPU count;
    `gpu_when(wildcards)` False (the config says CPU) requests none. A CPU job on N > 1
    nodes asks for N tasks (one launcher per node; a GPU job gets one task per node from
    sbatch --nodes already, and the plugin reads `tasks` as tasks per GPU there)."""
    resources = {
        name: res(rule_name, key, defaults.get(key))
        for key, name in CLUSTER_RESOURCES.items()
    }
    count = res(rule_name, "gpus", gpus)
    model = res(rule_name, "gpu_model", None)
    on_gpu = (
        (lambda w: bool(count))
        if gpu_when is None
        else (lambda w: bool(count) and gpu_when(w))
    )
    if gpu_when is None or not count:
        resources["gpu"] = count
        resources["gpu_model"] = model if count else None
    else:
        resources["gpu"] = lambda w: count if gpu_when(w) else 0
        resources["gpu_model"] = lambda w: model if gpu_when(w) else None
    nodes = resources["nodes"]
    if nodes and nodes > 1:
        resources["tasks"] = lambda w: None if on_gpu(w) else nodes
    return resources


def not_an_option(path):
    """A path the CLI cannot take for an option: `./-x.nc` for `-x.nc` (the rules quote
    every path for the shell; a leading `-` is the CLI's to misread)."""
    return f"./{path}" if path.startswith("-") else path


def local_files(section, name, patterns):
    """Expand the user's file names and globs; an unmatched pattern is an error naming the key."""
    import glob

    files = []
    for pattern in patterns:
        found = sorted(glob.glob(os.path.expanduser(pattern)))
        if not found:
            raise ValueError(
                f"config key '{section}.{name}.files': no file matches '{pattern}'"
            )
        files += [not_an_option(f) for f in found]
    if not files:
        raise ValueError(
            f"config key '{section}.{name}.files': source 'local' needs at least one file"
        )
    return files


# The figures each rule writes, every one a declared output with its own caption
# (workflow/report/<section>/<name>.rst): sr_train the loss curve, sr_evaluate
# scorebridge.sr.figures.EVALUATE_FIGURES, bridge_evaluate those of scorebridge.bridge.figures
# (tests/test_report.py checks these lists against the code and the captions).
SR_TRAIN_FIGURES = ["training_loss"]
SR_EVALUATE_FIGURES = [
    "maps",
    "spectra",
    "rank_histogram",
    "spread_skill",
    "rmse_by_level",
    "withheld_radiosondes",
]
BRIDGE_EVALUATE_FIGURES = ["trajectories", "marginals", "w1", "parameters"]
FIGURES = {
    "sr": SR_TRAIN_FIGURES + SR_EVALUATE_FIGURES,
    "bridge": BRIDGE_EVALUATE_FIGURES,
}
REPORT_CATEGORY = {"sr": "Super-resolution", "bridge": "Schrödinger bridges"}
# Captions, beside the rules (workflow/report/), whichever Snakefile includes this file.
REPORT_DIR = os.path.abspath(
    os.path.join(str(workflow.current_basedir), "..", "report")
)


def report_figure(section, name):
    """A figure's declared output, results/<section>/{experiment}/figures/<name>.png, in
    the report under its section and experiment with its own caption."""
    return report(
        f"{RESULTS}/{section}/{{experiment}}/figures/{name}.png",
        caption=os.path.join(REPORT_DIR, section, f"{name}.rst"),
        category=REPORT_CATEGORY[section],
        subcategory="{experiment}",
        labels={"experiment": "{experiment}", "figure": name},
    )


def report_figures(section, figures):
    """`report_figure` for each name, as named outputs (`output.<name>`)."""
    return {name: report_figure(section, name) for name in figures}


def names(section):
    return sorted(config.get(section, {}))


def all_targets():
    """Every output of the data and model rules (and the report's tables). Intermediate
    ones too: Snakemake deletes a job's outputs before it runs and when it fails, and
    rebuilds a missing intermediate output only when something downstream must run, so
    a killed `snakemake -R sr_sample` would leave samples.zarr gone while metrics.json
    stays, and the next run would say "Nothing to be done". As targets, a missing one
    is rebuilt and what depends on it reruns (tests/test_interrupted_rerun.py).
    Raw downloads (results/raw/) are not targets: deleting one refetches nothing."""
    targets = []
    targets += expand(f"{RESULTS}/data/era5/{{d}}.zarr", d=names("era5"))
    targets += expand(f"{RESULTS}/data/igra/{{d}}.zarr", d=names("igra"))
    targets += [
        f"{RESULTS}/data/obs/{igra_collocate_era5(d)}/{d}.zarr"
        for d in names("igra")
        if igra_collocate_era5(d)
    ]
    targets += expand(f"{RESULTS}/data/cells/{{d}}.zarr", d=names("cells"))
    for name in ("checkpoint.pt", "samples.zarr", "metrics.json"):
        targets += expand(f"{RESULTS}/sr/{{e}}/{name}", e=names("sr"))
    for name in ("model.pt", "metrics.json", "predictions.zarr"):
        targets += expand(f"{RESULTS}/bridge/{{e}}/{name}", e=names("bridge"))
    for section, figures in FIGURES.items():
        targets += expand(
            f"{RESULTS}/{section}/{{e}}/figures/{{f}}.png", e=names(section), f=figures
        )
    # metrics tables for the report (rules in tracking.smk)
    targets += expand(f"{RESULTS}/sr/{{e}}/metrics.html", e=names("sr"))
    targets += expand(f"{RESULTS}/bridge/{{e}}/metrics.html", e=names("bridge"))
    return targets


# Input functions.


def era5_raw_inputs(wildcards):
    """Files the ingestion reads: the user's files (local), a fetched file (cds,
    synthetic), or nothing (arco: read lazily from the remote store)."""
    spec = entry("era5", wildcards.dataset)
    if spec["source"] in ("cds", "synthetic"):
        return [f"{RESULTS}/raw/era5/{wildcards.dataset}.nc"]
    if spec["source"] == "local":
        return local_files("era5", wildcards.dataset, spec["files"])
    return []


def igra_raw_inputs(wildcards):
    spec = entry("igra", wildcards.dataset)
    if spec["source"] == "local":
        return local_files("igra", wildcards.dataset, spec["files"])
    return [f"{RESULTS}/raw/igra/{wildcards.dataset}"]


def igra_fetch_inputs(wildcards):
    spec = entry("igra", wildcards.dataset)
    if spec["source"] == "synthetic":
        return [f"{RESULTS}/data/era5/{spec['synthetic']['era5']}.zarr"]
    return []


def igra_collocate_era5(dataset):
    """The ERA5 grid a dataset is collocated with by default: collocate.era5, else the
    grid synthetic soundings were sampled from; None (no collocation target) for real
    soundings without collocate.era5 (an sr experiment still collocates them with its
    own ERA5 dataset)."""
    spec = entry("igra", dataset)
    if spec["collocate"]["era5"]:
        return spec["collocate"]["era5"]
    return spec["synthetic"]["era5"] if spec["source"] == "synthetic" else None


def cells_raw_inputs(wildcards):
    spec = entry("cells", wildcards.dataset)
    if spec["source"] == "simulate":
        return [f"{RESULTS}/raw/cells/{wildcards.dataset}.npz"]
    if not spec.get("path"):
        raise ValueError(
            f"config key 'cells.{wildcards.dataset}.path': required for source '{spec['source']}'"
        )
    return [not_an_option(os.path.expanduser(spec["path"]))]


def sr_obs(wildcards):
    spec = entry("sr", wildcards.experiment)
    if spec.get("igra"):
        return [f"{RESULTS}/data/obs/{spec['era5']}/{spec['igra']}.zarr"]
    return []


def torch_launcher(rule_name, section, component, gpus=0):
    """How a training command starts, as two functions of wildcards for the rule's params
    (the shell runs `{params.srun}{params.python} {params.torchrun}-m scorebridge ...`):
    nothing (one process); `-m torch.distributed.run --standalone --nproc_per_node P`
    (torchrun: DDP on one node) when the rule's resources ask for P > 1 GPUs, or on CPU
    when `<component>.nproc` is P > 1; `srun --ntasks-per-node 1` and
    `-m torch.distributed.run --nnodes N ...` (c10d rendezvous on the first node of the
    SLURM job) when they ask for N > 1 nodes.
    """

    def shape(wildcards):
        spec = entry(section, wildcards.experiment).get(component) or {}
        nodes = int(res(rule_name, "nodes", 1) or 1)
        on_gpu = uses_gpu(section, component)(wildcards)
        count = res(rule_name, "gpus", gpus) if on_gpu else 0
        per_node = max(1, int(count) // nodes) if count else int(spec.get("nproc") or 1)
        return nodes, per_node

    def srun(wildcards):
        nodes, _ = shape(wildcards)
        return "srun --ntasks-per-node 1 " if nodes > 1 else ""

    def torchrun(wildcards):
        nodes, per_node = shape(wildcards)
        if nodes == 1 and per_node == 1:
            return ""
        if nodes == 1:
            return f"-m torch.distributed.run --standalone --nproc_per_node {per_node} "
        head = "$(scontrol show hostnames $SLURM_JOB_NODELIST | head -n 1)"
        return (
            f"-m torch.distributed.run --nnodes {nodes} --nproc_per_node {per_node} "
            f"--rdzv_backend c10d --rdzv_endpoint {head}:29500 --rdzv_id $SLURM_JOB_ID "
        )

    return {"srun": srun, "torchrun": torchrun}


def obs_argument(input):
    """`--obs <path>` (quoted for the shell) when the rule has radiosonde observations."""
    return f"--obs {shlex.quote(input.obs[0])}" if input.obs else ""
