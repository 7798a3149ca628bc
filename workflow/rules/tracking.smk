# MLflow: create the store and every experiment once, before any job logs.


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
        sr=lambda w: ",".join(names("sr")),
        bridge=lambda w: ",".join(names("bridge")),
        tracking=json.dumps(config["tracking"], sort_keys=True),
    shell:
        "scorebridge tracking-init --tracking {params.tracking:q} --sr={params.sr:q} "
        "--bridge={params.bridge:q} --out {output} > {log} 2>&1"


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
    shell:
        "scorebridge metrics-table --metrics {input} --title 'Super-resolution: {wildcards.experiment}' "
        "--out {output} > {log} 2>&1"


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
    shell:
        "scorebridge metrics-table --metrics {input} --title 'Schrödinger bridge: {wildcards.experiment}' "
        "--out {output} > {log} 2>&1"
