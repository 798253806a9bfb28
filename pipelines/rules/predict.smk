# Stage 6: predict the configured test folder with the selected model, score it
# when reference labels are given, and draw the QC overlays.


rule predict_test:
    input:
        model=f"{OUT}/model/model.json",
    output:
        manifest=f"{OUT}/predictions/manifest.jsonl",
    params:
        model=lambda wildcards, input: os.path.dirname(input.model),
        images=config["test"].get("images", ""),
        out=lambda wildcards, output: os.path.dirname(output.manifest),
        formats=" ".join(config["test"]["formats"]),
        device=config["device"],
        mirroring="" if config["test"]["mirroring"] else "--no-mirroring",
    log:
        f"{OUT}/logs/predict_test.log",
    benchmark:
        f"{OUT}/benchmarks/predict_test.tsv"
    conda:
        MEDSEG_ENV
    threads: config["processes"]
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=gpu_resource,
    shell:
        "medseg predict -m {params.model:q} -i {params.images:q} -o {params.out:q} "
        "--formats {params.formats} --device {params.device} --threads {threads} "
        "{params.mirroring} > {log:q} 2>&1"


rule evaluate_test:
    input:
        manifest=f"{OUT}/predictions/manifest.jsonl",
        plans=f"{OUT}/plans.json",
    output:
        summary=f"{OUT}/predictions/summary.json",
        csv=f"{OUT}/predictions/summary.csv",
    params:
        predictions=lambda wildcards, input: os.path.dirname(input.manifest),
        labels=config["test"].get("labels", ""),
    log:
        f"{OUT}/logs/evaluate_test.log",
    benchmark:
        f"{OUT}/benchmarks/evaluate_test.tsv"
    conda:
        MEDSEG_ENV
    threads: config["processes"]
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "medseg evaluate {params.predictions:q} {params.labels:q} --labels {input.plans:q} "
        "-o {output.summary:q} --csv {output.csv:q} -j {threads} > {log:q} 2>&1"


rule qc:
    input:
        manifest=f"{OUT}/predictions/manifest.jsonl",
    output:
        f"{OUT}/qc.png",
    params:
        predictions=lambda wildcards, input: os.path.dirname(input.manifest),
        images=config["test"].get("images", ""),
        labels=(f"--labels {config['test']['labels']}" if config["test"].get("labels") else ""),
    log:
        f"{OUT}/logs/qc.log",
    benchmark:
        f"{OUT}/benchmarks/qc.tsv"
    conda:
        MEDSEG_ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "medseg qc {params.predictions:q} --images {params.images:q} {params.labels} "
        "-o {output:q} > {log:q} 2>&1"
