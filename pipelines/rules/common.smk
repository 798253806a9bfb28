# Helpers shared by the rules (input functions and argument builders).


def planner_args(wildcards=None):
    p = config["planner"]
    args = [f"--gpu-memory {p['gpu_memory_gb']}", f"--base-features {p['base_features']}"]
    if config["configurations"]:
        args.append("--configurations " + " ".join(config["configurations"]))
    for name, patch in p["patch_size"].items():
        args.append(f"--patch-size {name}={'x'.join(str(int(s)) for s in patch)}")
    return " ".join(args)


def planned_configurations(wildcards):
    """Configurations with their own preprocessed data (the cascade reuses 3d_fullres's)."""
    plans = json.loads(Path(checkpoints.plan.get().output[0]).read_text())
    return [
        f"{OUT}/preprocessed/{name}"
        for name, c in plans["configurations"].items()
        if "inherits_from" not in c
    ]


def trainable_configurations(wildcards):
    """Planned configurations medseg trains (a cascade's full-resolution stage is not
    trained yet: it needs the low-resolution stage's CV predictions as input)."""
    plans = json.loads(Path(checkpoints.plan.get().output[0]).read_text())
    wanted = config["configurations"]
    return [
        name
        for name, c in plans["configurations"].items()
        if "previous_stage" not in c and (not wanted or name in wanted)
    ]


def trained_folds(wildcards):
    """Every (configuration, fold) training job's final checkpoint."""
    return [
        f"{OUT}/models/{name}/fold_{fold}/checkpoint_final.safetensors"
        for name in trainable_configurations(wildcards)
        for fold in range(config["folds"])
    ]


def validated_folds(wildcards):
    """Every (configuration, fold) fold validation's metrics (the CV predictions beside)."""
    return [
        f"{OUT}/models/{name}/fold_{fold}/validation/metrics.json"
        for name in trainable_configurations(wildcards)
        for fold in range(config["folds"])
    ]


def gpu_resource(wildcards=None):
    return 1 if str(config["device"]).startswith("cuda") else 0


def test_targets():
    """What predicting the configured test folder produces (nothing without one)."""
    if not config["test"].get("images"):
        return []
    targets = [f"{OUT}/predictions/manifest.jsonl", f"{OUT}/qc.png"]
    if config["test"].get("labels"):
        targets.append(f"{OUT}/predictions/summary.json")
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
