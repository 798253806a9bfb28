# Stage 4: train each configuration and fold, then predict and score its validation
# cases. --resume: a rerun after an interruption continues from the last finished epoch.


rule train:
    input:
        preprocessed=f"{OUT}/preprocessed/{{config}}",
        plans=f"{OUT}/plans.json",
        splits=f"{OUT}/splits.json",
        dataset_json=f"{DATASET}/dataset.json",
    output:
        final=f"{OUT}/models/{{config}}/fold_{{fold}}/checkpoint_final.safetensors",
    params:
        folder=lambda wildcards, output: os.path.dirname(output.final),
        device=config["device"],
        t=config["training"],
    log:
        f"{OUT}/logs/train_{{config}}_fold_{{fold}}.log",
    benchmark:
        f"{OUT}/benchmarks/train_{{config}}_fold_{{fold}}.tsv"
    conda:
        MEDSEG_ENV
    threads: config["training"]["threads"]
    resources:
        mem_mb=config["training"]["mem_mb"],
        runtime=config["training"]["runtime"],
        gpu=gpu_resource,
    shell:
        "medseg train {input.preprocessed:q} {input.plans:q} {input.splits:q} "
        "--config {wildcards.config} --fold {wildcards.fold} -o {params.folder:q} "
        "--device {params.device} --threads {threads} "
        "--epochs {params.t[epochs]} --iterations {params.t[iterations]} "
        "--val-iterations {params.t[val_iterations]} --seed {params.t[seed]} "
        "--workers {params.t[workers]} --no-validation --resume > {log:q} 2>&1"


rule validate:
    input:
        final=f"{OUT}/models/{{config}}/fold_{{fold}}/checkpoint_final.safetensors",
        preprocessed=f"{OUT}/preprocessed/{{config}}",
        plans=f"{OUT}/plans.json",
        splits=f"{OUT}/splits.json",
        dataset_json=f"{DATASET}/dataset.json",
    output:
        metrics=f"{OUT}/models/{{config}}/fold_{{fold}}/validation/metrics.json",
    params:
        folder=lambda wildcards, input: os.path.dirname(input.final),
        dataset=lambda wildcards, input: os.path.dirname(input.dataset_json),
        device=config["device"],
        mirroring="" if config["training"]["mirroring"] else "--no-mirroring",
    log:
        f"{OUT}/logs/validate_{{config}}_fold_{{fold}}.log",
    benchmark:
        f"{OUT}/benchmarks/validate_{{config}}_fold_{{fold}}.tsv"
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
        "--device {params.device} --threads {threads} {params.mirroring} > {log:q} 2>&1"


rule curves:
    input:
        trained_folds,
    output:
        f"{OUT}/training_curves.png",
    params:
        models=f"{OUT}/models",
    log:
        f"{OUT}/logs/curves.log",
    benchmark:
        f"{OUT}/benchmarks/curves.tsv"
    conda:
        MEDSEG_ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "medseg curves {params.models:q} -o {output:q} > {log:q} 2>&1"
