# scorebridge: one DAG from raw data to MLflow and the report.
# The rules are thin: inputs, outputs, params, resources and one `scorebridge` CLI call.
import os

from snakemake.utils import min_version

from scorebridge.config import validate_config

min_version("8.0")


configfile: "config/config.yaml"


# Front page of `snakemake --report results/report.html`; captions in workflow/report/.
report: "workflow/report/workflow.rst"


# Validate against src/scorebridge/schemas/config.schema.yaml, filling defaults; errors name the key.
validate_config(
    config, os.path.join(workflow.basedir, "src/scorebridge/schemas/config.schema.yaml")
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
