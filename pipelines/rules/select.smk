# Stage 5: score the cross-validation predictions of every configuration and pairwise
# ensemble, choose the best and the postprocessing (select), and write the deployable
# model folder (export).


rule select:
    input:
        validated_folds,
        dataset_json=f"{DATASET}/dataset.json",
        plans=R.plans,
        splits=R.splits,
    output:
        selection=R.selection,
    params:
        models=R.models,
        dataset=lambda wildcards, input: os.path.dirname(input.dataset_json),
        cv=lambda wildcards, output: os.path.dirname(output.selection),
    log:
        R.log("select"),
    benchmark:
        R.benchmark("select")
    conda:
        MEDSEG_ENV
    threads: config["processes"]
    resources:
        mem_mb=8000,
        runtime=120,
    shell:
        "medseg select {params.models:q} --dataset {params.dataset:q} --plans {input.plans:q} "
        "--splits {input.splits:q} -o {params.cv:q} -j {threads} > {log:q} 2>&1"


rule export:
    input:
        trained_folds,
        selection=R.selection,
        plans=R.plans,
    output:
        model=R.model.model_json,
    params:
        models=R.models,
        model=lambda wildcards, output: os.path.dirname(output.model),
    log:
        R.log("export"),
    benchmark:
        R.benchmark("export")
    conda:
        MEDSEG_ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "medseg export {params.models:q} --plans {input.plans:q} "
        "--selection {input.selection:q} -o {params.model:q} > {log:q} 2>&1"
