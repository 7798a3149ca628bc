# MLflow: create the store and every experiment once, before any job logs.
# The experiment names are not params: adding an experiment must not rerun this rule
# (that would make experiments.json newer than every existing model output). An
# experiment added later is created by its first job, by name (race-safe). The names
# reach the command through the environment (inherited by jobs, also through sbatch).
os.environ.update(
    SCOREBRIDGE_SR_EXPERIMENTS=",".join(names("sr")),
    SCOREBRIDGE_BRIDGE_EXPERIMENTS=",".join(names("bridge")),
)


rule tracking_init:
    output:
        f"{RESULTS}/mlflow/experiments.json",
    log:
        f"{RESULTS}/logs/tracking_init.log",
    conda:
        ENV
    resources:
        **cluster_resources("tracking_init", runtime=10, mem_mb=1000),
    params:
        cli=SCOREBRIDGE,
        tracking=json.dumps(config["tracking"], sort_keys=True),
    shell:
        "{params.cli} tracking-init --tracking {params.tracking:q} --out {output:q} > {log:q} 2>&1"


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
