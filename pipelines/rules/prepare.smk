# Stages 1-3: fingerprint -> plan (a checkpoint: which configurations exist is
# known only after planning) -> split, and preprocessing per configuration.


rule fingerprint:
    input:
        dataset_json=f"{DATASET}/dataset.json",
        check=f"{OUT}/dataset_check.json",
    output:
        f"{OUT}/fingerprint.json",
    params:
        dataset=lambda wildcards, input: os.path.dirname(input.dataset_json),
        skip="--skip-invalid" if config["skip_invalid"] else "",
    log:
        f"{OUT}/logs/fingerprint.log",
    benchmark:
        f"{OUT}/benchmarks/fingerprint.tsv"
    conda:
        MEDSEG_ENV
    threads: config["processes"]
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "medseg fingerprint {params.dataset:q} -o {output:q} -j {threads} {params.skip} "
        "> {log:q} 2>&1"


checkpoint plan:
    input:
        f"{OUT}/fingerprint.json",
    output:
        f"{OUT}/plans.json",
    params:
        args=planner_args,
    log:
        f"{OUT}/logs/plan.log",
    benchmark:
        f"{OUT}/benchmarks/plan.tsv"
    conda:
        MEDSEG_ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "medseg plan {input:q} -o {output:q} {params.args} > {log:q} 2>&1"


rule split:
    input:
        dataset_json=f"{DATASET}/dataset.json",
    output:
        f"{OUT}/splits.json",
    params:
        dataset=lambda wildcards, input: os.path.dirname(input.dataset_json),
        folds=config["folds"],
        seed=config["split_seed"],
    log:
        f"{OUT}/logs/split.log",
    benchmark:
        f"{OUT}/benchmarks/split.tsv"
    conda:
        MEDSEG_ENV
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    shell:
        "medseg split {params.dataset:q} -o {output:q} --folds {params.folds} "
        "--seed {params.seed} > {log:q} 2>&1"


rule preprocess:
    input:
        dataset_json=f"{DATASET}/dataset.json",
        plans=f"{OUT}/plans.json",
    output:
        directory(f"{OUT}/preprocessed/{{config}}"),
    params:
        dataset=lambda wildcards, input: os.path.dirname(input.dataset_json),
    log:
        f"{OUT}/logs/preprocess_{{config}}.log",
    benchmark:
        f"{OUT}/benchmarks/preprocess_{{config}}.tsv"
    conda:
        MEDSEG_ENV
    threads: config["processes"]
    resources:
        mem_mb=8000,
        runtime=120,
    shell:
        "medseg preprocess {params.dataset:q} {input.plans:q} --config {wildcards.config} "
        "-o {output:q} -j {threads} > {log:q} 2>&1"
