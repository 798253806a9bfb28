"""Model folders are checked when they are loaded: each file against a JSON schema, then
what a schema cannot say (configurations that exist, label values in order, weight files
present and fitting their networks).

The schemas are one JSON file shipped with the package,
``medseg/inference/schemas/model_folder.schema.json``: its root describes
``model.json``, its ``$defs`` the parts of ``plans.json`` that prediction reads and
the ``plans.json``/``dataset.json`` of an nnU-Net v2 results folder. Every problem
is a :class:`ModelError` that names the file, the field (as a JSON path such as
``members[0].folds``) or the tensor, what is wrong and what to do.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path

from medseg.core.errors import CheckpointError, MedsegError, ModelError, RecordError
from medseg.core.layout import ModelFolder, NnunetResultsDir
from medseg.core.plans import Configuration, Plans
from medseg.core.records import PLANS_SCHEMA, check_schema

MODEL_SCHEMA = ("medseg.model", 1)
SCHEMA_FILE = "model_folder.schema.json"
#: How many schema problems of one file a message lists (the rest are counted).
MAX_REPORTED = 3
MEDSEG_FIX = "re-export the model with 'medseg export' or 'medseg select'"
NNUNET_FIX = (
    "copy the folder again from nnUNet_results (an nnU-Net v2 results folder holds "
    "plans.json, dataset.json and fold_K/checkpoint_final.pth)"
)
#: Foreground statistics that CTNormalization reads for its channel.
CT_PROPERTIES = ("mean", "std", "percentile_00_5", "percentile_99_5")
_REQUIRED = re.compile(r"^(.+) is a required property$")


@lru_cache(maxsize=1)
def folder_schema() -> dict:
    """The JSON schema of model folders (its ``$defs`` name each file's part)."""
    text = (resources.files("medseg.inference") / "schemas" / SCHEMA_FILE).read_text("utf-8")
    return json.loads(text)


@cache
def _validator(definition: str):
    from jsonschema import Draft202012Validator

    defs = folder_schema()["$defs"]
    return Draft202012Validator({"$ref": f"#/$defs/{definition}", "$defs": defs})


def json_path(parts) -> str:
    """``members[0].folds`` for the path ``["members", 0, "folds"]``."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe(error, prefix: tuple = ()) -> str:
    """``field.path: what is wrong`` for one jsonschema error."""
    path = [*prefix, *error.absolute_path]
    custom = error.schema.get("errorMessage") if isinstance(error.schema, dict) else None
    required = _REQUIRED.match(error.message) if error.validator == "required" else None
    if custom:  # the whole document as "got" would only repeat the file
        message = custom if not error.absolute_path else f"{custom} (got {_short(error.instance)})"
    elif required:
        path.append(ast.literal_eval(required.group(1)))
        message = "missing"
    else:
        message = error.message.replace(repr(error.instance), _short(error.instance))
    where = json_path(path)
    return f"{where}: {message}" if where else message


def schema_problems(document: object, definition: str, prefix: tuple = ()) -> list[str]:
    """Every way ``document`` breaks ``$defs/definition`` of the schema, in schema order."""
    errors = _validator(definition).iter_errors(document)
    return list(dict.fromkeys(describe(e, prefix) for e in errors))


def problem_message(where: str | Path, problems: list[str], fix: str) -> str:
    """One line: the file, the first few problems, how many more, and what to do."""
    shown = "; ".join(problems[:MAX_REPORTED])
    more = len(problems) - MAX_REPORTED
    return f"{where}: {shown}{f' (and {more} more)' if more > 0 else ''}; {fix}"


def require_valid(
    document: object, definition: str, where: str | Path, fix: str, prefix: tuple = ()
) -> None:
    """Raise a :class:`ModelError` listing the schema problems of ``document``, if any."""
    problems = schema_problems(document, definition, prefix)
    if problems:
        raise ModelError(problem_message(where, problems, f"{fix}, or fix the field"))


def read_json(path: Path, fix: str) -> object:
    """The JSON document in ``path``; a missing, unreadable or invalid file is a ModelError."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path}: missing; {fix}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"{path}: not valid JSON ({e}); {fix}, or repair the file") from e
    except OSError as e:
        raise ModelError(f"{path}: cannot be read ({e.strerror}); check its permissions") from e


def _read_record(path: Path, kind: tuple[str, int], definition: str) -> dict:
    """A medseg record file, checked for its kind and version, then against the schema."""
    document = read_json(path, MEDSEG_FIX)
    try:
        check_schema(document, kind, str(path))
    except RecordError as e:  # a wrong kind or version says what to do already
        fix = f"; {MEDSEG_FIX}" if not isinstance(document, dict) else ""
        raise ModelError(f"{e}{fix}") from e
    require_valid(document, definition, path, MEDSEG_FIX)
    return document


def check_labels(labels: list, where: str, fix: str) -> None:
    """Label values must be 0 (background), 1, 2, ... in order: they index the classes."""
    values = [v for v, _ in labels]
    if values != list(range(len(values))):
        raise ModelError(
            f"{where}: label values must be 0 (background), 1, 2, ... in order, got {values}; "
            f"{fix}, or fix the field"
        )


def member_parts(member: dict, field: str) -> Iterator[tuple[str, dict]]:
    """``(JSON path, part)`` of a member and of its previous stages, in that order."""
    while member:
        yield field, member
        member, field = member.get("previous"), f"{field}.previous"


def weight_path(root: Path, configuration: str, fold: int | str) -> Path:
    """Where a medseg model folder keeps the weights of one fold."""
    return ModelFolder(Path(root)).weights(configuration, fold)


def typed_plans(document: dict, plans_json: Path, fix: str) -> Plans:
    """The plans of a schema-valid document; what the typed record refuses is a ModelError."""
    try:
        return Plans.from_dict(document, str(plans_json))
    except RecordError as e:
        raise ModelError(f"{e}; {fix}, or fix the field") from e


def read_model_folder(root: Path) -> tuple[dict, Plans]:
    """``model.json`` and ``plans.json`` of a medseg model folder, checked: the schema,
    then every cross-check short of loading the weights."""
    root = Path(root)
    folder = ModelFolder(root)
    meta = _read_record(folder.model_json, MODEL_SCHEMA, "model")
    document = _read_record(folder.plans_json, PLANS_SCHEMA, "medseg_plans")
    plans = typed_plans(document, folder.plans_json, MEDSEG_FIX)
    check_model(root, meta, plans)
    return meta, plans


def check_model(root: Path, meta: dict, plans: Plans) -> None:
    """Cross-checks of a schema-valid model.json against its plans.json and weight files."""
    model_json, plans_json = ModelFolder(root).model_json, ModelFolder(root).plans_json
    check_labels(meta["labels"], f"{model_json}: labels", MEDSEG_FIX)
    in_plans = {"labels": plans.labels.to_list(), "channel_names": list(plans.channel_names)}
    for key, theirs in in_plans.items():
        if [list(x) if isinstance(x, (list, tuple)) else x for x in meta[key]] != theirs:
            raise ModelError(
                f"{model_json}: {key} {_short(meta[key])} differ from {plans_json}: {key} "
                f"{_short(theirs)}; {MEDSEG_FIX}"
            )
    for i, member in enumerate(meta["members"]):
        for field, part in member_parts(member, f"members[{i}]"):
            config = check_configuration(
                plans,
                part["configuration"],
                plans_json,
                f"{model_json}: {field}.configuration",
                MEDSEG_FIX,
            )
            _check_cascade(part, config, f"{model_json}: {field}", plans_json)
    _check_postprocessing(meta, model_json)
    check_weight_files(root, meta["members"])


def check_configuration(
    plans: Plans, name: str, plans_json: Path, referrer: str, fix: str
) -> Configuration:
    """The configuration ``name`` of ``plans`` (inheritance resolved), checked against the
    schema and against the plans' channels; ``referrer`` names whoever asked for it."""
    try:
        document = plans.resolve(name)
    except RecordError as e:
        raise ModelError(f"{referrer}: {e} (in {plans_json}); {fix}, or fix the field") from e
    field = ("configurations", name)
    require_valid(document, "configuration", plans_json, fix, prefix=field)
    config = Configuration(name, document)
    problems = _normalization_problems(plans, config, json_path(field))
    if len(config.spacing) != len(config.patch_size):
        problems.append(
            f"{json_path(field)}.spacing: {len(config.spacing)} values for a "
            f"{len(config.patch_size)}D patch_size"
        )
    if problems:
        raise ModelError(problem_message(plans_json, problems, f"{fix}, or fix the field"))
    return config


def _normalization_problems(plans: Plans, config: Configuration, field: str) -> list[str]:
    from medseg.preprocessing.normalize import SCHEMES

    channels, problems = list(plans.channel_names), []
    per_channel = {
        "normalization_schemes": config.normalization_schemes,
        "use_mask_for_norm": config.use_mask_for_norm,
    }
    for key, values in per_channel.items():
        if len(values) != len(channels):
            problems.append(
                f"{field}.{key}: {len(values)} entries for {len(channels)} channel(s) {channels}"
            )
    props = plans.intensity_properties
    for c, scheme in enumerate(config.normalization_schemes):
        if scheme not in SCHEMES:
            problems.append(
                f"{field}.normalization_schemes[{c}]: unknown scheme {scheme!r}; "
                f"known: {', '.join(SCHEMES)}"
            )
        if scheme != "CTNormalization":
            continue
        have = props.get(str(c), {})
        missing = [k for k in CT_PROPERTIES if not isinstance(have.get(k), (int, float))]
        if missing:
            problems.append(
                f"foreground_intensity_properties_per_channel.{c}: missing "
                f"{', '.join(missing)} (CTNormalization of channel {c} needs them)"
            )
    return problems


def _check_cascade(part: dict, config: Configuration, where: str, plans_json: Path) -> None:
    stage = config.previous_stage
    previous = (part.get("previous") or {}).get("configuration")
    if stage == previous:
        return
    if previous is None:
        what = f"has no 'previous', but {plans_json} makes it a cascade stage after {stage!r}"
    elif stage is None:
        what = f"has a 'previous' ({previous!r}), but {plans_json} gives it no previous_stage"
    else:
        what = f"follows {previous!r}, but {plans_json} says it follows {stage!r}"
    raise ModelError(
        f"{where}: configuration {part['configuration']!r} {what}; {MEDSEG_FIX}, or fix the field"
    )


def _check_postprocessing(meta: dict, model_json: Path) -> None:
    foreground = {v for v, _ in meta["labels"] if v != 0}
    steps = (meta.get("postprocessing") or {}).get("steps", [])
    for i, step in enumerate(steps):
        unknown = sorted(set(step.get("classes") or []) - foreground)
        if unknown:
            raise ModelError(
                f"{model_json}: postprocessing.steps[{i}].classes: {unknown} are not foreground "
                f"labels of this model ({sorted(foreground)}); {MEDSEG_FIX}, or fix the field"
            )


def check_weight_files(root: Path, members: list[dict]) -> None:
    """Every weight file that model.json names must exist; all missing ones are named."""
    needed = [
        weight_path(root, part["configuration"], fold)
        for i, member in enumerate(members)
        for _, part in member_parts(member, f"members[{i}]")
        for fold in part["folds"]
    ]
    missing = [p for p in dict.fromkeys(needed) if not p.is_file()]
    if missing:
        names = ", ".join(str(p.relative_to(root)) for p in missing)
        raise ModelError(
            f"{root}: weight file(s) named in model.json missing: {names}; "
            f"{MEDSEG_FIX} (it copies every fold's weights)"
        )


def build_checked_network(architecture: dict, n_in: int, n_classes: int, where: str):
    """:func:`medseg.nets.unet.build_network`, its failures a ModelError naming ``where``."""
    from medseg.nets.unet import build_network

    try:
        return build_network(architecture, n_in, n_classes)
    except (MedsegError, TypeError, ValueError, KeyError) as e:
        raise ModelError(f"{where}: cannot build the network ({e}); fix the field") from e


def load_checked_weights(network, path: Path) -> None:
    """Load a medseg weight file into ``network``; a damaged file or one that does not fit
    is a ModelError naming the file (and the tensor)."""
    from medseg.nets.checkpoint import load_checkpoint, load_weights, model_weights

    try:
        load_weights(network, model_weights(load_checkpoint(path)[0]), where=path)
    except CheckpointError as e:
        said, fix = str(e), f"{MEDSEG_FIX} from the training folder it came from"
        message = f"{said} {fix[0].upper()}{fix[1:]}" if said.endswith("?") else f"{said}; {fix}"
        raise ModelError(message) from e


def read_nnunet_files(root: Path) -> tuple[dict, dict]:
    """``plans.json`` and ``dataset.json`` of an nnU-Net v2 results folder, checked."""
    folder = NnunetResultsDir(root)
    plans_json, dataset_json = folder.plans_json, folder.dataset_json
    plans = read_json(plans_json, NNUNET_FIX)
    dataset = read_json(dataset_json, NNUNET_FIX)
    require_valid(plans, "nnunet_plans", plans_json, NNUNET_FIX)
    require_valid(dataset, "nnunet_dataset", dataset_json, NNUNET_FIX)
    for key in ("channel_names", "modality"):
        keys = sorted(dataset.get(key) or {}, key=int)
        if keys != [str(i) for i in range(len(keys))]:
            raise ModelError(
                f'{dataset_json}: {key}: keys must be "0", "1", ... in order, '
                f"got {keys}; {NNUNET_FIX}, or fix the field"
            )
    return plans, dataset
