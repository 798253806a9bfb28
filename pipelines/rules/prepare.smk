# Stages 1-3: fingerprint -> plan (a checkpoint: which configurations exist is
# known only after planning) -> split, and preprocessing per configuration.


rule fingerprint:
    input:
        dataset_json=f"{DATASET}/dataset.json",
        check=R.dataset_check,
    output:
        R.fingerprint,
    params:
        dataset=lambda wildcards, input: os.path.dirname(input.dataset_json),
        skip="--skip-invalid" if config["skip_invalid"] else "",
    log:
        R.log("fingerprint"),
    benchmark:
        R.benchmark("fingerprint")
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
        R.fingerprint,
    output:
        plans=R.plans,
        stages=R.configurations,
    params:
        args=planner_args,
    log:
        R.log("plan"),
    benchmark:
        R.benchmark("plan")
    conda:
        MEDSEG_ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "medseg plan {input:q} -o {output.plans:q} {params.args} > {log:q} 2>&1"


rule split:
    input:
        dataset_json=f"{DATASET}/dataset.json",
    output:
        R.splits,
    params:
        dataset=lambda wildcards, input: os.path.dirname(input.dataset_json),
        folds=config["folds"],
        seed=config["split_seed"],
    log:
        R.log("split"),
    benchmark:
        R.benchmark("split")
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
        plans=R.plans,
    output:
        directory(R.preprocessed("{config}")),
    params:
        dataset=lambda wildcards, input: os.path.dirname(input.dataset_json),
    log:
        R.log("preprocess_{config}"),
    benchmark:
        R.benchmark("preprocess_{config}")
    conda:
        MEDSEG_ENV
    threads: config["processes"]
    resources:
        mem_mb=8000,
        runtime=120,
    shell:
        "medseg preprocess {params.dataset:q} {input.plans:q} --config {wildcards.config} "
        "-o {output:q} -j {threads} > {log:q} 2>&1"
