# Stage 4: train each configuration and fold, then predict and score its validation
# cases. --resume: a rerun after an interruption (a crash, a cluster's time limit, a
# preemption) continues from the last checkpoint: the last finished epoch, or the
# iteration where SIGTERM/SIGUSR1 stopped it (exit code 75), or the last timed
# checkpoint (training.checkpoint_minutes). training.retries: how often Snakemake
# starts a failed training job again. training.gpus: GPUs per training job (data
# parallel on one node; the job's `gpu` resource with device cuda).


rule train:
    input:
        preprocessed=data_of,
        previous=previous_of,
        plans=R.plans,
        splits=R.splits,
        dataset_json=f"{DATASET}/dataset.json",
    output:
        final=R.fold("{config}", "{fold}").checkpoint(),
    params:
        folder=lambda wildcards, output: os.path.dirname(output.final),
        device=config["device"],
        t=config["training"],
        previous=previous_arg,
        checkpoint=checkpoint_arg,
    log:
        R.log("train_{config}_fold_{fold}"),
    benchmark:
        R.benchmark("train_{config}_fold_{fold}")
    conda:
        MEDSEG_ENV
    threads: config["training"]["threads"]
    retries: config["training"].get("retries")
    resources:
        mem_mb=config["training"]["mem_mb"],
        runtime=config["training"]["runtime"],
        gpu=train_gpu_resource,
    shell:
        "medseg train {input.preprocessed:q} {input.plans:q} {input.splits:q} "
        "--config {wildcards.config} --fold {wildcards.fold} -o {params.folder:q} "
        "--device {params.device} --gpus {params.t[gpus]} --threads {threads} "
        "--epochs {params.t[epochs]} --iterations {params.t[iterations]} "
        "--val-iterations {params.t[val_iterations]} --seed {params.t[seed]} "
        "--workers {params.t[workers]} --no-validation --resume {params.previous} "
        "{params.checkpoint} "
        "> {log:q} 2>&1"


rule validate:
    input:
        final=R.fold("{config}", "{fold}").checkpoint(),
        preprocessed=data_of,
        previous=previous_of,
        plans=R.plans,
        splits=R.splits,
        dataset_json=f"{DATASET}/dataset.json",
    output:
        metrics=R.fold("{config}", "{fold}").validation_metrics,
    params:
        folder=lambda wildcards, input: os.path.dirname(input.final),
        dataset=lambda wildcards, input: os.path.dirname(input.dataset_json),
        device=config["device"],
        mirroring="" if config["training"]["mirroring"] else "--no-mirroring",
        previous=previous_arg,
    log:
        R.log("validate_{config}_fold_{fold}"),
    benchmark:
        R.benchmark("validate_{config}_fold_{fold}")
    conda:
        MEDSEG_ENV
    threads: config["training"]["threads"]
    resources:
        mem_mb=config["training"]["mem_mb"],
        runtime=config["training"]["runtime"],
        gpu=gpu_resource,
    shell:
        "medseg validate {input.preprocessed:q} {input.plans:q} {input.splits:q} "
        "--fold {wildcards.fold} -o {params.folder:q} --dataset {params.dataset:q} "
        "--device {params.device} --threads {threads} {params.mirroring} {params.previous} "
        "> {log:q} 2>&1"


rule previous_stage:
    # a cascade stage's input: the previous stage's CV segmentations on its grid, once
    input:
        previous_stage_folds,
        preprocessed=data_of,
        plans=R.plans,
        splits=R.splits,
    output:
        summary=R.previous_stage("{config}").summary,
    params:
        models=R.models,
        previous=lambda wildcards: planned_stages()["previous"][wildcards.config],
        folder=lambda wildcards, output: os.path.dirname(output.summary),
    log:
        R.log("previous_stage_{config}"),
    benchmark:
        R.benchmark("previous_stage_{config}")
    conda:
        MEDSEG_ENV
    threads: 1
    resources:
        mem_mb=config["training"]["mem_mb"],
        runtime=60,
    shell:
        "medseg previous-stage {params.models:q}/{params.previous} {input.preprocessed:q} "
        "{input.plans:q} {input.splits:q} --config {wildcards.config} "
        "-o {params.folder:q} > {log:q} 2>&1"


rule curves:
    input:
        trained_folds,
    output:
        R.curves,
    params:
        models=R.models,
    log:
        R.log("curves"),
    benchmark:
        R.benchmark("curves")
    conda:
        MEDSEG_ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "medseg curves {params.models:q} -o {output:q} > {log:q} 2>&1"
