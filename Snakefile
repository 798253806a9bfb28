# medseg workflow: dataset -> check -> fingerprint -> plan -> split -> preprocess
# (-> train -> ensemble -> predict, added stage by stage). Each rule calls one medseg command.
#   snakemake --cores 2 --configfile pipelines/config/demo.yaml
import json
import os
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

min_version("8.0")


# No default configfile: Snakemake would merge it into a user's --configfile
# (the demo's CPU-sized planner overrides leaking into a real run).
if "dataset" not in config:
    raise WorkflowError(
        "no dataset configured: run with --configfile pipelines/config/demo.yaml (the demo), "
        "--configfile pipelines/config/hippocampus.yaml, or --config dataset=PATH"
    )
validate(config, "pipelines/schemas/config.schema.yaml", set_default=True)

DATASET = str(Path(config["dataset"]))
OUT = str(Path(config["output"]))
MEDSEG_ENV = "../envs/medseg.yaml"  # relative to pipelines/rules/


include: "pipelines/rules/common.smk"
include: "pipelines/rules/dataset.smk"
include: "pipelines/rules/prepare.smk"


rule all:
    default_target: True
    input:
        f"{OUT}/dataset_check.json",
        f"{OUT}/splits.json",
        planned_configurations,


onsuccess:
    if Path(f"{OUT}/plans.json").exists():
        shell(f"medseg summary {OUT}")
