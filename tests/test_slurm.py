"""The workflow through Snakemake's SLURM executor plugin, on a real SLURM cluster.

The cluster is ``tests/slurm_cluster.py``: Debian's slurm-wlm (22.05) and munge
(``make slurm-tools``), one node that is this machine, partitions ``cpu`` and ``gpu``
like ``pipelines/profiles/slurm`` (the gpu one without GPUs). The ``slurm`` fixture
starts it once per session and stops it by PID at the end; where it cannot be
installed or started (not Linux, not root, no packages) the tests that use it skip
with the reason, and fail instead when ``CI=true`` (like the real data in conftest.py).
The workflow runs with ``--profile pipelines/profiles/slurm --profile
pipelines/profiles/slurm-test`` (the overlay: test partitions' sizes, no GPU, small
memory and runtime, no account).

Accounting: none, the lightest option that works. The plugin
(snakemake-executor-plugin-slurm 2.8.0) reads job states with ``sacct`` whenever sacct
is on PATH, which slurm-client always puts there; without slurmdbd (and its MariaDB)
sacct only answers "Slurm accounting storage is disabled" and every status query fails
(the plugin's issue #38). The plugin's own alternative is its ``status_command``
setting: ``squeue`` (``squeue --states=all --name RUN_ID``), which sees a finished job
for as long as slurmctld keeps it (``MinJobAge``; the plugin returns to sacct if
MinJobAge is under 3 x its first status-check delay). So the cluster keeps finished
jobs for an hour (MinJobAge=3600) and the overlay sets ``slurm-status-command:
squeue``. One job per rule instance is read from ``squeue --states=all`` (each job's
comment is ``rule_RULE[_wildcards_VALUES]``) and checked against jobcomp/filetxt's
``jobcomp.txt``, one line per finished job.

What the real run showed: the slurm profile's ``slurm_extra: '--gres=gpu:1'`` made the
plugin refuse every train, validate and predict_test job (GRES is the plugin's to set);
the rules' ``gpu`` resource alone gives ``--gpus=1`` with ``device: cuda``. The
slurm-jobstep executor runs each rule as ``srun ...`` inside its job with SLURM_CONF
removed from the environment, so the cluster provides an ``srun`` that names its
slurm.conf (``slurm_cluster.srun_shim``; a real cluster keeps slurm.conf in /etc).
With no account given the plugin tries to guess one with sacct, fails, and submits
without (warnings only).

Wall time of the tiny config below on 2 cores shared with other work (load 2 to 4),
four runs: 58 to 92 s locally, 170 to 320 s through SLURM (15 jobs; each starts
Snakemake twice, and the plugin's status checks back off by 10 s while no job
finishes). The whole module takes about 4 to 5 minutes.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
import slurm_cluster
import torch
import yaml
from conftest import ROOT
from services import unavailable
from test_training import _train_cmd, tiny  # noqa: F401  (tiny: a module fixture)
from test_workflow import _digest, snakemake, tiny_config

from medseg.nets.checkpoint import load_checkpoint, model_weights

PROFILE = ROOT / "pipelines" / "profiles" / "slurm"
OVERLAY = ROOT / "pipelines" / "profiles" / "slurm-test"
#: The rule instances of the tiny config, as the plugin names its jobs (--comment).
JOBS = {
    "rule_check_dataset": "cpu",
    "rule_fingerprint": "cpu",
    "rule_plan": "cpu",
    "rule_split": "cpu",
    "rule_preprocess_wildcards_3d_fullres": "cpu",
    "rule_train_wildcards_3d_fullres_0": "gpu",
    "rule_train_wildcards_3d_fullres_1": "gpu",
    "rule_validate_wildcards_3d_fullres_0": "gpu",
    "rule_validate_wildcards_3d_fullres_1": "gpu",
    "rule_select": "cpu",
    "rule_export": "cpu",
    "rule_predict_test": "gpu",
    "rule_evaluate_test": "cpu",
    "rule_qc": "cpu",
    "rule_curves": "cpu",
}
#: Outputs that are the same bytes on SLURM as locally (the rest hold times or paths;
#: model weights are compared by _digest, the optimizer's RNG state being per process).
IDENTICAL = (
    "dataset_check.json",
    "fingerprint.json",
    "plans.json",
    "configurations.json",
    "splits.json",
    "preprocessed/3d_fullres/demo_*",
    "preprocessed/3d_fullres/plans.json",
    "models/3d_fullres/fold_*/validation/*",
    "cv/3d_fullres/summary.json",
    "cv/selection.json",
    "model/plans.json",
    "model/3d_fullres/fold_*.json",
    "predictions/*.nii.gz",
    "predictions/summary.json",
    "qc.png",
    "training_curves.png",
)


def _unavailable(reason: str):
    unavailable("SLURM test cluster", reason)


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A running one-node SLURM cluster (slurm_cluster.Cluster), stopped at the end."""
    reason = slurm_cluster.unavailable()
    if reason:
        _unavailable(reason)
    try:
        cluster = slurm_cluster.start(tmp_path_factory.mktemp("slurm"))
    except slurm_cluster.ClusterError as error:
        _unavailable(str(error))
    try:
        yield cluster
    finally:
        slurm_cluster.stop(cluster.root)


def _profile(path: Path) -> dict:
    return yaml.safe_load((path / "config.yaml").read_text())


def test_profiles_use_the_test_cluster_partitions():
    """The overlay keeps each rule on the slurm profile's partition, and the test
    cluster has exactly those partitions."""
    main, overlay = _profile(PROFILE), _profile(OVERLAY)
    default = main["default-resources"]["slurm_partition"]
    partition = {r: v.get("slurm_partition", default) for r, v in main["set-resources"].items()}
    assert {default, *partition.values()} == set(slurm_cluster.PARTITIONS)
    for rule, resources in overlay["set-resources"].items():
        assert resources.get("slurm_partition", default) == partition.get(rule, default), rule
    for job, expected in JOBS.items():  # rule_NAME[_wildcards_...]
        assert partition.get(job[5:].split("_wildcards")[0], default) == expected, job


def test_profile_slurm_extra_is_accepted_by_the_plugin():
    """No slurm_extra with an option the installed plugin sets itself (it refuses every
    such job at submission: --gres, --gpus, --mem, ...)."""
    validation = pytest.importorskip("snakemake_executor_plugin_slurm.validation")
    forbidden = validation.get_forbidden_slurm_options()
    for profile in (PROFILE, OVERLAY):
        for rule, resources in _profile(profile).get("set-resources", {}).items():
            extra = str(resources.get("slurm_extra", ""))
            bad = [name for pattern, name in forbidden.items() if re.search(pattern, extra)]
            assert not bad, f"{profile.name}: {rule}: slurm_extra sets {bad}"


def _wait_for(cluster, job_id: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = cluster.run("squeue", "-h", "--states=all", "-j", job_id, "-o", "%T").stdout
        if out.strip() in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"):
            return out.strip()
        time.sleep(0.5)
    return f"still not finished after {timeout} s"


def test_the_cluster_runs_a_batch_job_with_a_step_in_each_partition(slurm, tmp_path):
    for partition in slurm_cluster.PARTITIONS:
        options = f"--parsable -p {partition} --mem 100 -t 1 -o {partition}.out".split()
        job = slurm.run("sbatch", *options, "-D", str(tmp_path), "--wrap", "srun -n1 echo step ok")
        job = job.stdout.strip()
        assert _wait_for(slurm, job) == "COMPLETED"
        assert (tmp_path / f"{partition}.out").read_text().strip() == "step ok"
        assert f"JobId={job} " in slurm.jobcomp.read_text()
    # the accounting this cluster does without: why the profile overlay uses squeue
    sacct = slurm.run("sacct", "-X", check=False)
    assert sacct.returncode != 0 and "accounting storage is disabled" in sacct.stderr + sacct.stdout


def _jobs(slurm, run_id: str) -> list[dict[str, str]]:
    """Every job of one Snakemake run: id, comment, state, partition (squeue --states=all)."""
    out = slurm.run("squeue", "-h", "--states=all", "--name", run_id, "-o", "%i|%k|%T|%P").stdout
    return [
        dict(zip(("id", "comment", "state", "partition"), x.split("|"), strict=True))
        for x in out.split()
    ]


def _same_files(a: Path, b: Path) -> list[str]:
    """The IDENTICAL outputs that differ between results folders a and b (all must exist)."""
    names = sorted({str(p.relative_to(a)) for pattern in IDENTICAL for p in a.glob(pattern)})
    assert len(names) > 40, names  # never an empty comparison
    return [n for n in names if (a / n).read_bytes() != (b / n).read_bytes()]


def _training_log(path: Path) -> list[dict]:
    timing = ("epoch_seconds", "iterations_per_second")
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    return [{k: v for k, v in x.items() if k not in timing} for x in lines]


@pytest.mark.slow
def test_workflow_through_slurm_matches_the_local_run(
    slurm, demo_dataset, tmp_path, monkeypatch, record_property
):
    """The tiny CI config, once locally and once with every rule an sbatch job: one job
    per rule instance, on the profile's partitions, and the same results."""
    local, remote = tmp_path / "local", tmp_path / "slurm"
    local.mkdir()
    remote.mkdir()
    started = time.monotonic()
    result = snakemake(local, "--configfile", str(tiny_config(local, demo_dataset)))
    local_seconds = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    for name in ("SLURM_CONF", "PATH"):
        monkeypatch.setenv(name, slurm.env()[name])
    profiles = ("--profile", str(PROFILE), "--profile", str(OVERLAY))
    config = tiny_config(remote, demo_dataset)
    # a cluster's training keys: timed mid-epoch checkpoints (about 1 s here) must not
    # change the weights; retries: a training job stopped by a time limit starts again
    cluster = yaml.safe_load(config.read_text())
    cluster["training"].update(checkpoint_minutes=0.02, retries=2)
    config.write_text(yaml.safe_dump(cluster))
    config = str(config)
    started = time.monotonic()
    result = snakemake(remote, *profiles, "--configfile", config)
    slurm_seconds = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    record_property("local_seconds", round(local_seconds, 1))
    record_property("slurm_seconds", round(slurm_seconds, 1))
    print(f"tiny workflow: local {local_seconds:.0f} s, through SLURM {slurm_seconds:.0f} s")

    # one sbatch job per rule instance, each COMPLETED, on the profile's partition
    run_id = re.search(r"SLURM run ID: (\S+)", result.stdout + result.stderr).group(1)
    jobs = _jobs(slurm, run_id)
    assert Counter(j["comment"] for j in jobs) == Counter(list(JOBS))
    assert {j["comment"]: j["partition"] for j in jobs} == JOBS
    assert {j["state"] for j in jobs} == {"COMPLETED"}
    finished = re.findall(r"JobId=(\d+) .*?Name=(\S+) JobState=(\S+)", slurm.jobcomp.read_text())
    assert sorted((i, s) for i, n, s in finished if n == run_id) == sorted(
        (j["id"], "COMPLETED") for j in jobs
    )
    for job in jobs:  # the plugin's log of each job, kept (slurm-keep-successful-logs)
        assert list((remote / ".snakemake" / "slurm_logs").rglob(f"{job['id']}.log")), job
    train_logs = list((remote / ".snakemake" / "slurm_logs" / "rule_train").rglob("*.log"))
    assert len(train_logs) == 2
    assert all("--checkpoint-minutes 0.02" in x.read_text() for x in train_logs)

    # the same results: bit-identical where the outputs hold no times or paths
    a, b = local / "out", remote / "out"
    assert _same_files(a, b) == []
    assert _digest(b) == _digest(a)
    for fold in (0, 1):
        log = Path("models", "3d_fullres", f"fold_{fold}", "training_log.jsonl")
        assert _training_log(b / log) == _training_log(a / log)

    # with device: cuda, training asks SLURM for a GPU the test cluster does not have
    result = snakemake(
        remote,
        *profiles,
        "--configfile",
        config,
        "--config",
        "device=cuda",
        "--forcerun",
        "train",
        "--until",
        "train",
    )
    text = result.stdout + result.stderr
    assert result.returncode != 0
    assert "--gpus=1" in text and "Invalid generic resource (gres) specification" in text


def _state_of(slurm, job: str) -> str:
    """``STATE EXIT_CODE`` of a finished job (scontrol; the cluster keeps it an hour)."""
    out = slurm.run("scontrol", "show", "job", job).stdout
    fields = dict(f.split("=", 1) for f in out.split() if "=" in f)
    return f"{fields.get('JobState')} {fields.get('ExitCode')}"


@pytest.mark.slow
def test_time_limit_stops_training_and_a_rerun_finishes_it_identically(slurm, tiny, tmp_path):  # noqa: F811
    """A training job with a 1-minute limit: SLURM sends SIGTERM at the limit, medseg
    checkpoints mid-epoch and exits 75; the same job again with --resume finishes, and
    its weights equal, bit for bit, those of a run never stopped (made meanwhile)."""
    root, _, _ = tiny
    args = ("--iterations", "2000")  # 2 epochs: about 2-4 min
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    reference = subprocess.Popen(
        _train_cmd(root, tmp_path / "whole", 2, *args), env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    command = " ".join(shlex.quote(a) for a in _train_cmd(root, tmp_path / "cut", 2, *args))
    sbatch = ("sbatch", "--parsable", "-p", "gpu", "-c", "1", "--mem", "1500", "-D", str(tmp_path))

    def submit(limit: int, log: str, *extra: str) -> str:
        options = (*sbatch, "-t", str(limit), "-o", log)
        wrap = f"exec env OMP_NUM_THREADS=1 {command} {' '.join(extra)}"
        return slurm.run(*options, "--wrap", wrap).stdout.strip()

    first = submit(1, "first.out")
    assert _wait_for(slurm, first, timeout=240) == "TIMEOUT", (tmp_path / "first.out").read_text()
    said = (tmp_path / "first.out").read_text()
    assert "stopped:" in said and "--resume" in said and "Traceback" not in said, said
    state = load_checkpoint(tmp_path / "cut" / "checkpoint_latest.safetensors")[1]["state"]
    assert state["cursor"] is not None, "stopped at an epoch end: the test needs a longer run"
    second = submit(10, "second.out", "--resume")
    assert _wait_for(slurm, second, timeout=480) == "COMPLETED", (
        tmp_path / "second.out"
    ).read_text()
    assert reference.wait(timeout=600) == 0, reference.stderr.read()
    whole = model_weights(load_checkpoint(tmp_path / "whole" / "checkpoint_final.safetensors")[0])
    cut = model_weights(load_checkpoint(tmp_path / "cut" / "checkpoint_final.safetensors")[0])
    assert whole.keys() == cut.keys() and all(torch.equal(whole[k], cut[k]) for k in whole)
    print(f"first job {_state_of(slurm, first)}, stopped at {state['cursor']['epoch']}/"
          f"{state['cursor']['next_iteration']}; second {_state_of(slurm, second)}")  # fmt: skip
