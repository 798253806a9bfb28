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
