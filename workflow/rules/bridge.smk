# Population trajectories: multi-marginal Schrödinger bridge with iterative reference
# refinement, fitted on all snapshots, then scored leave-one-out against baselines.


rule bridge_fit:
    input:
        cells=lambda w: f"{RESULTS}/data/cells/{entry('bridge', w.experiment)['cells']}.zarr",
        experiments=EXPERIMENTS,
    output:
        f"{RESULTS}/bridge/{{experiment}}/model.pt",
    log:
        f"{RESULTS}/logs/bridge_fit/{{experiment}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/bridge_fit/{{experiment}}.tsv"
    conda:
        ENV
    threads: 2
    resources:
        **cluster_resources("bridge_fit", runtime=30, mem_mb=4000),
    params:
        cli=SCOREBRIDGE,
        spec=lambda w: spec_json("bridge", w.experiment),
    shell:
        "{params.cli} bridge-fit --spec {params.spec:q} --experiment {wildcards.experiment:q} "
        "--cells {input.cells:q} --experiments {input.experiments:q} --out {output:q} > {log:q} 2>&1"


rule bridge_evaluate:
    input:
        cells=lambda w: f"{RESULTS}/data/cells/{entry('bridge', w.experiment)['cells']}.zarr",
        model=f"{RESULTS}/bridge/{{experiment}}/model.pt",
        experiments=EXPERIMENTS,
    output:
        **report_figures("bridge", BRIDGE_EVALUATE_FIGURES),
        metrics=f"{RESULTS}/bridge/{{experiment}}/metrics.json",
        predictions=directory(f"{RESULTS}/bridge/{{experiment}}/predictions.zarr"),
        anndata=f"{RESULTS}/bridge/{{experiment}}/predictions.h5ad",
    log:
        f"{RESULTS}/logs/bridge_evaluate/{{experiment}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/bridge_evaluate/{{experiment}}.tsv"
    conda:
        ENV
    threads: 2
    resources:
        **cluster_resources("bridge_evaluate", runtime=60, mem_mb=4000),
    params:
        cli=SCOREBRIDGE,
        spec=lambda w: spec_json("bridge", w.experiment),
        figures=lambda w, output: os.path.dirname(output.trajectories),
    shell:
        "{params.cli} bridge-evaluate --spec {params.spec:q} --experiment {wildcards.experiment:q} "
        "--cells {input.cells:q} --model {input.model:q} --experiments {input.experiments:q} "
        "--predictions {output.predictions:q} --anndata {output.anndata:q} --figures {params.figures:q} "
        "--out {output.metrics:q} > {log:q} 2>&1"
