# medseg workflow: dataset -> check -> fingerprint -> plan -> split -> preprocess -> train
# and validate (each configuration x fold) -> select (CV, ensembles, postprocessing) ->
# export (model folder) -> predict a test folder -> evaluate, QC. Each rule calls one medseg command; see pipelines/rules/.
#   snakemake --cores 2 --configfile pipelines/config/demo.yaml
import json
import os
import shlex
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

from medseg.core.layout import Results

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
R = Results(Path(config["output"]))  # every on-disk name of the results folder
MEDSEG_ENV = "../envs/medseg.yaml"  # relative to pipelines/rules/


include: "pipelines/rules/common.smk"
include: "pipelines/rules/dataset.smk"
include: "pipelines/rules/prepare.smk"
include: "pipelines/rules/train.smk"
include: "pipelines/rules/select.smk"
include: "pipelines/rules/predict.smk"


rule all:
    default_target: True
    input:
        R.dataset_check,
        R.selection,
        R.model.model_json,
        R.curves,
        test_targets(),


onsuccess:
    if R.plans.exists():
        shell(f"medseg summary {R.root}")
