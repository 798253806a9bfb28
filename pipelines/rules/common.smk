# Helpers shared by the rules (input functions and argument builders).


def planner_args(wildcards=None):
    p = config["planner"]
    args = [f"--gpu-memory {p['gpu_memory_gb']}", f"--base-features {p['base_features']}"]
    if config["configurations"]:
        args.append("--configurations " + " ".join(config["configurations"]))
    for name, patch in p["patch_size"].items():
        args.append(f"--patch-size {name}={'x'.join(str(int(s)) for s in patch)}")
    return " ".join(args)


def trainable_configurations(wildcards):
    """The configurations medseg trains, as 'medseg plan' listed them beside the plans
    (configurations.json): known only once planning ran, hence the checkpoint."""
    stages = json.loads(Path(checkpoints.plan.get().output.stages).read_text())
    return stages["train"]


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


def gpu_resource(wildcards=None):
    return 1 if str(config["device"]).startswith("cuda") else 0


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
