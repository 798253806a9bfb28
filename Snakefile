# medseg workflow: dataset -> check -> (fingerprint -> plan -> split -> preprocess ->
# train -> ensemble -> predict, added stage by stage). Each rule calls one medseg command.
#   snakemake --cores 2 --configfile pipelines/config/demo.yaml
import json
import os
from pathlib import Path

from snakemake.utils import min_version, validate

min_version("8.0")


configfile: os.path.join(workflow.basedir, "pipelines/config/demo.yaml")


validate(config, "pipelines/schemas/config.schema.yaml", set_default=True)

DATASET = str(Path(config["dataset"]))
OUT = str(Path(config["output"]))
MEDSEG_ENV = "../envs/medseg.yaml"  # relative to pipelines/rules/


include: "pipelines/rules/dataset.smk"


rule all:
    default_target: True
    input:
        f"{OUT}/dataset_check.json",


onsuccess:
    report = json.loads(Path(f"{OUT}/dataset_check.json").read_text())
    print(f"\nmedseg: {report['dataset']}: {report['n_valid']} of {report['n_cases']} cases valid")
    print(f"medseg: results in {OUT}/")
