# Stage 6: predict the configured test folder with the selected model, score it
# when reference labels are given, and draw the QC overlays.
#
# The test folders are rule inputs: the folder itself, and every file below it
# (test_folder_files() in common.smk, listed when the workflow starts; hidden files
# and folders left out). With Snakemake's default rerun triggers (checked with
# `snakemake -n`, Snakemake 9):
#   * a file added, removed or renamed anywhere below the folder: the set of input
#     files changed, rerun ("Set of input files has changed since last execution");
#     directly in the folder also its own mtime ("Updated input files: FOLDER"),
#     which any new entry there changes, a hidden one too (a needless rerun);
#   * a file rewritten with a newer mtime: rerun ("Updated input files: FILE"),
#     except that for files up to 1 MB (--max-checksum-file-size) Snakemake compares
#     the checksum it recorded at the last run: the same content (e.g. `touch`) does
#     not rerun;
#   * another folder in the config: rerun (input set and params).
# Not seen: a file replaced by one whose mtime is older than the outputs (e.g.
# copied with `cp -p` or `rsync -t`): `touch` it. `--rerun-triggers mtime` turns
# the input-set check off. (The folder alone would not do: its mtime changes when
# an entry is added, removed or renamed directly in it, not when a file is
# rewritten in place nor when a subfolder's content changes.)


rule predict_test:
    input:
        model=R.model.model_json,
        images=config["test"].get("images", []),
        image_files=test_folder_files("images"),
    output:
        manifest=R.predictions.manifest,
    params:
        model=lambda wildcards, input: os.path.dirname(input.model),
        out=lambda wildcards, output: os.path.dirname(output.manifest),
        formats=" ".join(config["test"]["formats"]),
        device=config["device"],
        mirroring="" if config["test"]["mirroring"] else "--no-mirroring",
        reports=" ".join(
            f"--{key}" for key in ("statistics", "preview") if config["test"].get(key, False)
        ),
    log:
        R.log("predict_test"),
    benchmark:
        R.benchmark("predict_test")
    conda:
        MEDSEG_ENV
    threads: config["processes"]
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=gpu_resource,
    # The predictions folder holds only this rule's and evaluate_test's outputs; it is
    # emptied first so that a case removed from the test folder leaves no stale label
    # behind for evaluate_test to score. medseg predict groups channel files
    # (CASE_0000, CASE_0001 ...) into cases by the model's channel count.
    shell:
        "rm -rf {params.out:q} && "
        "medseg predict -m {params.model:q} -i {input.images:q} -o {params.out:q} "
        "--formats {params.formats} --device {params.device} --threads {threads} "
        "{params.mirroring} {params.reports} > {log:q} 2>&1"


rule evaluate_test:
    input:
        manifest=R.predictions.manifest,
        plans=R.plans,
        labels=config["test"].get("labels", []),
        label_files=test_folder_files("labels"),
    output:
        summary=R.predictions.summary,
        csv=R.predictions.summary_csv,
    params:
        predictions=lambda wildcards, input: os.path.dirname(input.manifest),
    log:
        R.log("evaluate_test"),
    benchmark:
        R.benchmark("evaluate_test")
    conda:
        MEDSEG_ENV
    threads: config["processes"]
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "medseg evaluate {params.predictions:q} {input.labels:q} --labels {input.plans:q} "
        "-o {output.summary:q} --csv {output.csv:q} -j {threads} > {log:q} 2>&1"


rule qc:
    input:
        manifest=R.predictions.manifest,
        images=config["test"].get("images", []),
        image_files=test_folder_files("images"),
        labels=config["test"].get("labels", []),
        label_files=test_folder_files("labels"),
    output:
        R.qc,
    params:
        predictions=lambda wildcards, input: os.path.dirname(input.manifest),
        labels_option="--labels" if config["test"].get("labels") else "",
    log:
        R.log("qc"),
    benchmark:
        R.benchmark("qc")
    conda:
        MEDSEG_ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "medseg qc {params.predictions:q} --images {input.images:q} "
        "{params.labels_option} {input.labels:q} "
        "-o {output:q} > {log:q} 2>&1"
