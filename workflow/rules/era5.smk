# ERA5: raw source -> results/data/era5/{dataset}.zarr (the data contract in DESIGN.md).


rule era5_fetch:
    output:
        f"{RESULTS}/raw/era5/{{dataset}}.nc",
    log:
        f"{RESULTS}/logs/era5_fetch/{{dataset}}.log",
    conda:
        ENV
    resources:
        **cluster_resources("era5_fetch", runtime=120, mem_mb=2000),
    params:
        cli=SCOREBRIDGE,
        spec=lambda w: spec_json(
            "era5", w.dataset, drop=("files", "chunks", "stream", "member", "arco_url")
        ),
    shell:
        "{params.cli} era5-fetch --spec {params.spec:q} --out {output:q} > {log:q} 2>&1"


rule era5_ingest:
    input:
        era5_raw_inputs,
    output:
        directory(f"{RESULTS}/data/era5/{{dataset}}.zarr"),
    log:
        f"{RESULTS}/logs/era5_ingest/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/era5_ingest/{{dataset}}.tsv"
    conda:
        ENV
    threads: 2
    resources:
        **cluster_resources("era5_ingest", runtime=60, mem_mb=4000),
    params:
        cli=SCOREBRIDGE,
        spec=lambda w: spec_json(
            "era5", w.dataset, drop=("synthetic", "product", "product_type")
        ),
    shell:
        "{params.cli} era5-ingest --spec {params.spec:q} --threads {threads} --out {output:q} {input:q} > {log:q} 2>&1"
