# MLflow: create the store and every experiment once, before any job logs.
from scorebridge.tracking.links import print_run_links
from scorebridge.tracking.uri import store_identity

# experiments.json: the store's URI and the experiment ids every job that logs reads (an
# input of those rules). Its params are where the runs go (tracking.uri, or env
# MLFLOW_TRACKING_URI when that is null; artifact_root; experiment_prefix): a change of
# them reruns tracking_init and, through this input, every job that logs, so that the
# new store holds their runs. (An `ancient()` input would not rerun them, and would also
# hide from Snakemake 9 every other job downstream of tracking_init: a new experiment's
# jobs, a changed key's; the call would run tracking_init alone and exit 0.)
# How jobs log (on_error, system_metrics, register) is not a param: it reaches tracking_init
# and the jobs through env SCOREBRIDGE_TRACKING, applies to the jobs that run from then on,
# and reruns nothing. The experiment names are not params either: adding an experiment
# must not rerun this rule (and with it every model); an experiment added later is created
# by its first job, by name (race-safe). Names, settings and the invocation id reach the
# commands through the environment (inherited by jobs, also through sbatch).
EXPERIMENTS = f"{RESULTS}/mlflow/experiments.json"
os.environ.update(
    SCOREBRIDGE_SR_EXPERIMENTS=",".join(names("sr")),
    SCOREBRIDGE_BRIDGE_EXPERIMENTS=",".join(names("bridge")),
    SCOREBRIDGE_TRACKING=json.dumps(config["tracking"], sort_keys=True),
)


rule tracking_init:
    output:
        EXPERIMENTS,
    log:
        f"{RESULTS}/logs/tracking_init.log",
    conda:
        ENV
    resources:
        **cluster_resources("tracking_init", runtime=10, mem_mb=1000),
    params:
        cli=SCOREBRIDGE,
        store=json.dumps(store_identity(config["tracking"]), sort_keys=True),
    shell:
        "{params.cli} tracking-init --out {output:q} > {log:q} 2>&1"


# At the end of a successful call: the dashboard links of the runs it made.
onsuccess:
    print_run_links(EXPERIMENTS, os.environ.get("SCOREBRIDGE_INVOCATION"))


# Metrics tables for the report: each evaluate rule's metrics.json rendered as HTML.


rule sr_metrics_table:
    input:
        f"{RESULTS}/sr/{{experiment}}/metrics.json",
    output:
        report(
            f"{RESULTS}/sr/{{experiment}}/metrics.html",
            caption="../report/sr_metrics.rst",
            category="Super-resolution",
            subcategory="{experiment}",
            labels={"experiment": "{experiment}", "table": "metrics"},
        ),
    log:
        f"{RESULTS}/logs/sr_metrics_table/{{experiment}}.log",
    conda:
        ENV
    resources:
        **cluster_resources("sr_metrics_table", runtime=10, mem_mb=1000),
    params:
        cli=SCOREBRIDGE,
        title=lambda w: f"Super-resolution: {w.experiment}",
    shell:
        "{params.cli} metrics-table --metrics {input:q} --title {params.title:q} "
        "--out {output:q} > {log:q} 2>&1"


rule bridge_metrics_table:
    input:
        f"{RESULTS}/bridge/{{experiment}}/metrics.json",
    output:
        report(
            f"{RESULTS}/bridge/{{experiment}}/metrics.html",
            caption="../report/bridge_metrics.rst",
            category="Schrödinger bridges",
            subcategory="{experiment}",
            labels={"experiment": "{experiment}", "table": "metrics"},
        ),
    log:
        f"{RESULTS}/logs/bridge_metrics_table/{{experiment}}.log",
    conda:
        ENV
    resources:
        **cluster_resources("bridge_metrics_table", runtime=10, mem_mb=1000),
    params:
        cli=SCOREBRIDGE,
        title=lambda w: f"Schrödinger bridge: {w.experiment}",
    shell:
        "{params.cli} metrics-table --metrics {input:q} --title {params.title:q} "
        "--out {output:q} > {log:q} 2>&1"
