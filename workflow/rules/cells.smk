# Snapshot time courses -> results/data/cells/{dataset}.zarr.


rule cells_simulate:
    output:
        f"{RESULTS}/raw/cells/{{dataset}}.npz",
    log:
        f"{RESULTS}/logs/cells_simulate/{{dataset}}.log",
    conda:
        ENV
    resources:
        **cluster_resources("cells_simulate", runtime=30, mem_mb=2000),
    params:
        cli=SCOREBRIDGE,
        spec=lambda w: spec_json("cells", w.dataset, only=["source", "simulate"]),
    shell:
        "{params.cli} cells-simulate --spec {params.spec:q} --out {output:q} > {log:q} 2>&1"


rule cells_ingest:
    input:
        cells_raw_inputs,
    output:
        directory(f"{RESULTS}/data/cells/{{dataset}}.zarr"),
    log:
        f"{RESULTS}/logs/cells_ingest/{{dataset}}.log",
    conda:
        ENV
    resources:
        **cluster_resources("cells_ingest", runtime=30, mem_mb=4000),
    params:
        cli=SCOREBRIDGE,
        spec=lambda w: spec_json("cells", w.dataset),
    shell:
        "{params.cli} cells-ingest --spec {params.spec:q} --out {output:q} {input:q} > {log:q} 2>&1"
