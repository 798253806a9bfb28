"""The configuration of ``medseg serve``: a YAML file checked against ``config.schema.json``.

Every problem is a :class:`ServeConfigError` naming the key (``routes[0].model: ...``)
and what to do. Relative paths (``spool``, model folders, folder destinations) are
taken from the configuration file's own folder. Routing (:func:`match_route`) is a
pure function of a series' attributes: the first route whose conditions all hold
wins; a series no route matches is ignored.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path

from medseg.core.errors import MedsegError
from medseg.core.options import OutputFormat

SCHEMA_FILE = "config.schema.json"
FIX = "see 'medseg serve --example-config' for a complete, commented example"

EXAMPLE_CONFIG = """\
# medseg serve: a DICOM node that segments the series a PACS sends it.
ae_title: MEDSEG                 # this node's AE title (the PACS's "called AE")
port: 11112
host: 127.0.0.1                  # the interface to listen on (0.0.0.0: all of them)
allowed_callers: [ORTHANC]       # calling AE titles accepted; any other is rejected
spool: spool/                    # received instances, results and the queue (SQLite)
quiet_seconds: 10                # a series is complete after this long without an instance
models:                          # name -> model folder (medseg or nnU-Net v2), loaded once
  hippocampus: models/hippocampus
routes:                          # first match wins; a series no route matches is ignored
  - name: hippocampus-mr
    model: hippocampus
    modality: MR                 # one value or a list (exact, upper case in DICOM)
    body_part: [BRAIN, HEAD]     # BodyPartExamined (left out: any)
    series_description: "(?i)t1" # regular expression searched in SeriesDescription
    min_instances: 20            # at least this many instances (slices)
    image_type: [ORIGINAL, PRIMARY]  # values ImageType must contain
destinations:                    # every result goes to each of them
  - name: pacs                   # C-STORE
    ae_title: ORTHANC
    host: 127.0.0.1
    port: 4242
  - name: archive                # a folder: <folder>/<SeriesInstanceUID>/<run>/<file>
    folder: results/
formats: [dicom-seg, rtstruct]   # dicom-seg, rtstruct, nifti (nifti goes to folders only)
retry:                           # deliveries to a destination that is down
  backoff_seconds: [5, 30, 120, 600]   # wait before try 2, 3, 4, and after (the last)
  max_attempts: 50
prediction:
  device: auto                   # auto, cpu, cuda, cuda:N
  mirroring: true                # test-time mirroring (slower, a little better)
"""


class ServeConfigError(MedsegError, ValueError):
    """A ``medseg serve`` configuration that cannot be used (the message names the key)."""


@dataclass(frozen=True)
class Route:
    """Which series go to which model: every condition given must hold."""

    name: str
    model: str
    modality: tuple[str, ...] = ()
    body_part: tuple[str, ...] = ()
    series_description: str | None = None
    min_instances: int = 1
    image_type: tuple[str, ...] = ()


@dataclass(frozen=True)
class Destination:
    """Where results go: a C-STORE SCP (``ae_title``, ``host``, ``port``) or a ``folder``."""

    name: str
    ae_title: str | None = None
    host: str | None = None
    port: int | None = None
    folder: Path | None = None

    @property
    def is_folder(self) -> bool:
        return self.folder is not None


@dataclass(frozen=True)
class Retry:
    backoff_seconds: tuple[float, ...] = (5.0, 30.0, 120.0, 600.0)
    max_attempts: int = 50

    def delay(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th failed try (1-based)."""
        return self.backoff_seconds[min(attempts, len(self.backoff_seconds)) - 1]


@dataclass(frozen=True)
class Prediction:
    device: str = "auto"
    mirroring: bool = True
    step: float = 0.5


@dataclass(frozen=True)
class ServeConfig:
    ae_title: str
    port: int
    allowed_callers: tuple[str, ...]
    spool: Path
    models: dict[str, Path]
    routes: tuple[Route, ...]
    destinations: tuple[Destination, ...]
    host: str = "127.0.0.1"
    quiet_seconds: float = 10.0
    formats: tuple[OutputFormat, ...] = (OutputFormat.DICOM_SEG,)
    retry: Retry = field(default_factory=Retry)
    prediction: Prediction = field(default_factory=Prediction)

    def destination(self, name: str) -> Destination | None:
        return next((d for d in self.destinations if d.name == name), None)


@dataclass(frozen=True)
class SeriesAttributes:
    """What routing looks at, from a series' first instance (no patient data)."""

    modality: str = ""
    body_part: str = ""
    description: str = ""
    image_type: tuple[str, ...] = ()


@cache
def config_schema() -> dict:
    text = (resources.files("medseg.serve") / SCHEMA_FILE).read_text("utf-8")
    return json.loads(text)


def _schema_problems(document: object) -> list[str]:
    from jsonschema import Draft202012Validator

    from medseg.inference.model_check import describe

    errors = Draft202012Validator(config_schema()).iter_errors(document)
    return list(dict.fromkeys(describe(e) for e in errors))


def _strings(value) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def _route(i: int, raw: dict, models: dict) -> Route:
    where = f"routes[{i}]"
    if raw["model"] not in models:
        known = ", ".join(sorted(models))
        raise ServeConfigError(
            f"{where}.model: {raw['model']!r} is not a key of models (known: {known}); "
            "name one of them or add it under models"
        )
    pattern = raw.get("series_description")
    if pattern is not None:
        try:
            re.compile(pattern)
        except re.error as e:
            raise ServeConfigError(
                f"{where}.series_description: not a regular expression ({e}): {pattern!r}; "
                "write a Python regular expression (re.search), e.g. '(?i)t1'"
            ) from None
    return Route(
        name=raw.get("name", f"route{i}"),
        model=raw["model"],
        modality=_strings(raw.get("modality")),
        body_part=tuple(s.upper() for s in _strings(raw.get("body_part"))),
        series_description=pattern,
        min_instances=raw.get("min_instances", 1),
        image_type=tuple(s.upper() for s in raw.get("image_type", ())),
    )


def _destination(raw: dict, base: Path) -> Destination:
    if "folder" in raw:
        return Destination(raw["name"], folder=(base / raw["folder"]).resolve())
    return Destination(raw["name"], raw["ae_title"], raw["host"], raw["port"])


def parse_config(document: object, base: Path, where: str = "config") -> ServeConfig:
    """The configuration in ``document`` (parsed YAML), relative paths taken from ``base``.

    Raises :class:`ServeConfigError` naming the first problems' keys. Pure apart from
    checking that each model folder exists.
    """
    problems = _schema_problems(document)
    if problems:
        shown = "; ".join(problems[:5])
        raise ServeConfigError(f"{where}: {shown}; {FIX}")
    models = {name: (base / path).resolve() for name, path in document["models"].items()}
    for name, path in models.items():
        if not path.is_dir():
            raise ServeConfigError(
                f"{where}: models.{name}: {path} is not a folder; check the path"
            )
    names = [d["name"] for d in document["destinations"]]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ServeConfigError(f"{where}: destinations: name {twice[0]!r} is used twice")
    try:
        routes = tuple(_route(i, r, models) for i, r in enumerate(document["routes"]))
    except ServeConfigError as e:
        raise ServeConfigError(f"{where}: {e}") from None
    retry, prediction = document.get("retry", {}), document.get("prediction", {})
    return ServeConfig(
        ae_title=document["ae_title"],
        port=document["port"],
        host=document.get("host", "127.0.0.1"),
        allowed_callers=tuple(document["allowed_callers"]),
        spool=(base / document["spool"]).resolve(),
        quiet_seconds=float(document.get("quiet_seconds", 10)),
        models=models,
        routes=routes,
        destinations=tuple(_destination(d, base) for d in document["destinations"]),
        formats=tuple(OutputFormat(f) for f in document.get("formats", ["dicom-seg"])),
        retry=Retry(
            tuple(float(s) for s in retry.get("backoff_seconds", Retry.backoff_seconds)),
            retry.get("max_attempts", Retry.max_attempts),
        ),
        prediction=Prediction(**prediction),
    )


def load_config(path: Path) -> ServeConfig:
    """Read and check the YAML configuration file ``path``."""
    import yaml

    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text("utf-8"))
    except yaml.YAMLError as e:
        raise ServeConfigError(f"{path}: not valid YAML ({e}); {FIX}") from None
    return parse_config(document, path.resolve().parent, str(path))


def match_route(routes, attrs: SeriesAttributes, instances: int) -> Route | None:
    """The first route whose every condition holds for a series, or None."""
    for route in routes:
        if route.modality and attrs.modality not in route.modality:
            continue
        if route.body_part and attrs.body_part.upper() not in route.body_part:
            continue
        if route.series_description is not None and not re.search(
            route.series_description, attrs.description
        ):
            continue
        if instances < route.min_instances:
            continue
        if not set(route.image_type) <= {v.upper() for v in attrs.image_type}:
            continue
        return route
    return None
