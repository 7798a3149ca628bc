# scorebridge: one DAG from raw data to MLflow and the report.
# The rules are thin: inputs, outputs, params, resources and one `scorebridge` CLI call.
import os

from snakemake.utils import min_version

from scorebridge.config import read_config_file, validate_config

min_version("8.0")

# Snakemake reads the files of `--configfile` itself, before this file runs (a malformed
# one stops it with "Config file is not valid JSON or YAML": `scorebridge check-config
# FILE` names the line). The workflow's own config/config.yaml is read by the directive
# below: an empty or malformed one is reported here first, with its file and line.
if os.path.exists("config/config.yaml"):
    read_config_file("config/config.yaml")


configfile: "config/config.yaml"


# Front page of `snakemake --report results/report.html`; captions in workflow/report/.
report: "workflow/report/workflow.rst"


# Validate against src/scorebridge/schemas/config.schema.yaml, filling defaults, then the
# names that refer to other entries and the rules across keys; errors name the key and
# the file and line that set it.
validate_config(
    config,
    os.path.join(workflow.basedir, "src/scorebridge/schemas/config.schema.yaml"),
    # the files read, lowest precedence first: config/config.yaml (unless absent or
    # --replace-workflow-config), then those of --configfile
    files=(
        ["config/config.yaml"]
        if os.path.exists("config/config.yaml")
        and not workflow.config_settings.replace_workflow_config
        else []
    )
    + [str(f) for f in workflow.config_settings.configfiles],
    overrides=workflow.config_settings.config,  # --config key=value: no file to name
)

# `progress: false` silences the progress bars of every job (scorebridge.progress).
if not config["progress"]:
    os.environ.update(SCOREBRIDGE_NO_PROGRESS="1")  # set for the jobs, not read here


wildcard_constraints:
    dataset=r"[A-Za-z0-9_\-]+",
    experiment=r"[A-Za-z0-9_\-]+",


include: "workflow/rules/common.smk"
include: "workflow/rules/tracking.smk"
include: "workflow/rules/era5.smk"
include: "workflow/rules/igra.smk"
include: "workflow/rules/cells.smk"
include: "workflow/rules/sr.smk"
include: "workflow/rules/bridge.smk"


rule all:
    default_target: True
    input:
        all_targets(),
