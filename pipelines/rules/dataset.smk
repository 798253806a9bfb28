# Stage 0: validate every case before anything is computed from the dataset.


rule check_dataset:
    input:
        dataset_json=f"{DATASET}/dataset.json",
    output:
        report=R.dataset_check,
    params:
        dataset=lambda wildcards, input: os.path.dirname(input.dataset_json),
        links="--allow-outside-links" if config["allow_outside_links"] else "",
    log:
        R.log("check_dataset"),
    benchmark:
        R.benchmark("check_dataset")
    conda:
        MEDSEG_ENV
    threads: config["processes"]
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "medseg check {params.dataset:q} -j {threads} {params.links} --report {output.report:q} "
        "> {log:q} 2>&1"
