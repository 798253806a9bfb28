# Helpers shared by the rules (input functions and argument builders).


def planner_args(wildcards=None):
    p = config["planner"]
    args = [f"--preset {p['preset']}", f"--base-features {p['base_features']}"]
    if p.get("gpu_memory_gb") is not None:  # unset: the preset's own target
        args.append(f"--gpu-memory {p['gpu_memory_gb']}")
    names = list(config["configurations"])
    if "3d_cascade_fullres" in names:  # its plan is built from these two
        names += [n for n in ("3d_lowres", "3d_fullres") if n not in names]
    if names:
        args.append("--configurations " + " ".join(names))
    for name, patch in p["patch_size"].items():
        args.append(f"--patch-size {name}={'x'.join(str(int(s)) for s in patch)}")
    return " ".join(args)


def planned_stages():
    """What 'medseg plan' listed beside the plans (configurations.json): known only once
    planning ran, hence the checkpoint."""
    path = Path(checkpoints.plan.get().output.stages)
    stages = json.loads(path.read_text())
    if stages.get("schema_version") != 2:  # an older medseg's planning
        raise WorkflowError(
            f"{path} was written by an older medseg (it does not say which data and previous "
            f"stage each configuration needs); delete it and {R.plans} to plan again"
        )
    return stages


def trainable_configurations(wildcards):
    """The configurations medseg trains (a cascade stage after its previous stage)."""
    return planned_stages()["train"]


def data_of(wildcards):
    """The preprocessed folder a configuration trains on (3d_cascade_fullres: 3d_fullres's)."""
    return R.preprocessed(planned_stages()["data"][wildcards.config])


def previous_of(wildcards):
    """A cascade stage's previous-stage segmentations (nothing for other configurations)."""
    if wildcards.config not in planned_stages()["previous"]:
        return []
    return [R.previous_stage(wildcards.config).summary]


def previous_arg(wildcards, input):
    return f"--previous {shlex.quote(os.path.dirname(input.previous[0]))}" if input.previous else ""


def checkpoint_arg(wildcards):
    minutes = config["training"].get("checkpoint_minutes")
    return "" if minutes is None else f"--checkpoint-minutes {minutes}"


def previous_stage_folds(wildcards):
    """Every fold validation of the previous stage of cascade stage `config`."""
    previous = planned_stages()["previous"][wildcards.config]
    return [R.fold(previous, fold).validation_metrics for fold in range(config["folds"])]


def trained_folds(wildcards):
    """Every (configuration, fold) training job's final checkpoint."""
    return [
        R.fold(name, fold).checkpoint()
        for name in trainable_configurations(wildcards)
        for fold in range(config["folds"])
    ]


def validated_folds(wildcards):
    """Every (configuration, fold) fold validation's metrics (the CV predictions beside)."""
    return [
        R.fold(name, fold).validation_metrics
        for name in trainable_configurations(wildcards)
        for fold in range(config["folds"])
    ]


def gpu_resource(wildcards=None, count=1):
    """GPUs a job asks for: `count` with a cuda device, else none."""
    return count if str(config["device"]).startswith("cuda") else 0


def train_gpu_resource(wildcards=None):
    """The train rule's GPUs: training.gpus with a cuda device (medseg train --gpus)."""
    return gpu_resource(wildcards, config["training"]["gpus"])


def test_targets():
    """What predicting the configured test folder produces (nothing without one)."""
    if not config["test"].get("images"):
        return []
    targets = [R.predictions.manifest, R.qc]
    if config["test"].get("labels"):
        targets.append(R.predictions.summary)
    return targets


def test_folder_files(key):
    """Every file below the configured test folder `key` ("images" or "labels"), sorted,
    hidden files and folders left out (none if it is not configured or not a folder:
    the folder itself is an input too, and Snakemake names it if it is missing)."""
    folder = config["test"].get(key)
    if not folder or not Path(folder).is_dir():
        return []
    root = Path(folder)
    return sorted(
        str(p)
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
