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
        "scorebridge tracking-init --tracking {params.tracking:q} --sr {params.sr:q} "
        "--bridge {params.bridge:q} --out {output} > {log} 2>&1"
