# IGRA v2: station files -> results/data/igra/{dataset}.zarr; collocation with an ERA5 grid.


rule igra_fetch:
    input:
        igra_fetch_inputs,
    output:
        directory(f"{RESULTS}/raw/igra/{{dataset}}"),
    log:
        f"{RESULTS}/logs/igra_fetch/{{dataset}}.log",
    conda:
        ENV
    resources:
        **cluster_resources("igra_fetch", runtime=60, mem_mb=2000),
    params:
        cli=SCOREBRIDGE,
        spec=lambda w: spec_json(
            "igra", w.dataset, drop=["collocate", "dates", "pressure_range"]
        ),
    shell:
        "{params.cli} igra-fetch --spec {params.spec:q} --out {output:q} {input:q} > {log:q} 2>&1"


rule igra_ingest:
    input:
        igra_raw_inputs,
    output:
        directory(f"{RESULTS}/data/igra/{{dataset}}.zarr"),
    log:
        f"{RESULTS}/logs/igra_ingest/{{dataset}}.log",
    conda:
        ENV
    resources:
        **cluster_resources("igra_ingest", runtime=30, mem_mb=4000),
    params:
        cli=SCOREBRIDGE,
        spec=lambda w: spec_json(
            "igra",
            w.dataset,
            only=[
                "source",
                "product",
                "stations",
                "dates",
                "area",
                "pressure_range",
                "station_list",
            ],
        ),
    shell:
        "{params.cli} igra-ingest --spec {params.spec:q} --out {output:q} {input:q} > {log:q} 2>&1"


rule igra_collocate:
    input:
        igra=f"{RESULTS}/data/igra/{{dataset}}.zarr",
        era5=f"{RESULTS}/data/era5/{{era5}}.zarr",
    output:
        directory(f"{RESULTS}/data/obs/{{era5}}/{{dataset}}.zarr"),
    log:
        f"{RESULTS}/logs/igra_collocate/{{era5}}/{{dataset}}.log",
    wildcard_constraints:
        era5=r"[A-Za-z0-9_\-]+",
    conda:
        ENV
    resources:
        **cluster_resources("igra_collocate", runtime=30, mem_mb=4000),
    params:
        cli=SCOREBRIDGE,
        spec=lambda w: spec_json("igra", w.dataset, only=["collocate"]),
    shell:
        "{params.cli} igra-collocate --spec {params.spec:q} --igra {input.igra:q} "
        "--era5 {input.era5:q} --out {output:q} > {log:q} 2>&1"
