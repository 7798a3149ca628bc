# Atmospheric super-resolution: prior training, zero-shot posterior sampling, evaluation.


rule sr_train:
    input:
        era5=lambda w: f"{RESULTS}/data/era5/{entry('sr', w.experiment)['era5']}.zarr",
        experiments=EXPERIMENTS,
    output:
        **report_figures("sr", SR_TRAIN_FIGURES),
        checkpoint=f"{RESULTS}/sr/{{experiment}}/checkpoint.pt",
    log:
        f"{RESULTS}/logs/sr_train/{{experiment}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/sr_train/{{experiment}}.tsv"
    conda:
        ENV
    threads: 2
    resources:
        **cluster_resources(
            "sr_train",
            runtime=60,
            mem_mb=8000,
            gpus=1,
            gpu_when=uses_gpu("sr", "train"),
        ),
    params:
        **torch_launcher("sr_train", "sr", "train", gpus=1),
        python=PYTHON,
        spec=lambda w: spec_json("sr", w.experiment, drop=["sample", "evaluate"]),
        ckpt_dir=f"{RESULTS}/sr/{{experiment}}/checkpoints",
    shell:
        "{params.srun}{params.python} {params.torchrun}-m scorebridge sr-train --spec {params.spec:q} "
        "--experiment {wildcards.experiment:q} --era5 {input.era5:q} "
        "--experiments {input.experiments:q} --checkpoint-dir {params.ckpt_dir:q} "
        "--figure {output.training_loss:q} --out {output.checkpoint:q} > {log:q} 2>&1"


rule sr_sample:
    input:
        era5=lambda w: f"{RESULTS}/data/era5/{entry('sr', w.experiment)['era5']}.zarr",
        obs=sr_obs,
        checkpoint=f"{RESULTS}/sr/{{experiment}}/checkpoint.pt",
        experiments=EXPERIMENTS,
    output:
        directory(f"{RESULTS}/sr/{{experiment}}/samples.zarr"),
    log:
        f"{RESULTS}/logs/sr_sample/{{experiment}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/sr_sample/{{experiment}}.tsv"
    conda:
        ENV
    threads: 2
    resources:
        **cluster_resources(
            "sr_sample",
            runtime=60,
            mem_mb=8000,
            gpus=1,
            gpu_when=uses_gpu("sr", "sample"),
        ),
    params:
        cli=SCOREBRIDGE,
        spec=lambda w: spec_json("sr", w.experiment, drop=["evaluate"]),
        obs=lambda w, input: obs_argument(input),
    shell:
        "{params.cli} sr-sample --spec {params.spec:q} --experiment {wildcards.experiment:q} "
        "--era5 {input.era5:q} {params.obs} --checkpoint {input.checkpoint:q} "
        "--experiments {input.experiments:q} --out {output:q} > {log:q} 2>&1"


rule sr_evaluate:
    input:
        era5=lambda w: f"{RESULTS}/data/era5/{entry('sr', w.experiment)['era5']}.zarr",
        obs=sr_obs,
        samples=f"{RESULTS}/sr/{{experiment}}/samples.zarr",
        experiments=EXPERIMENTS,
    output:
        **report_figures("sr", SR_EVALUATE_FIGURES),
        metrics=f"{RESULTS}/sr/{{experiment}}/metrics.json",
    log:
        f"{RESULTS}/logs/sr_evaluate/{{experiment}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/sr_evaluate/{{experiment}}.tsv"
    conda:
        ENV
    resources:
        **cluster_resources("sr_evaluate", runtime=30, mem_mb=8000),
    params:
        cli=SCOREBRIDGE,
        spec=lambda w: spec_json("sr", w.experiment),
        obs=lambda w, input: obs_argument(input),
        figures=lambda w, output: os.path.dirname(output.maps),
    shell:
        "{params.cli} sr-evaluate --spec {params.spec:q} --experiment {wildcards.experiment:q} "
        "--era5 {input.era5:q} {params.obs} --samples {input.samples:q} "
        "--experiments {input.experiments:q} --figures {params.figures:q} "
        "--out {output.metrics:q} > {log:q} 2>&1"
