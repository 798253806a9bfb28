"""The configuration of ``medseg serve``: a YAML file checked against ``config.schema.json``.

Every problem is a :class:`ServeConfigError` naming the key (``routes[0].model: ...``)
and what to do. Relative paths (``spool``, model folders, folder destinations) are
taken from the configuration file's own folder. Routing (:func:`match_route`) is a
pure function of a series' attributes: the first route whose conditions all hold
wins; a series no route matches is ignored.
"""

from __future__ import annotations

import datetime
import json
import re
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

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
  - name: pacs-web               # STOW-RS to a DICOMweb server
    url: https://pacs.example.org/dicom-web
    credentials: secrets/pacs-web.yaml   # see dicomweb_sources
dicomweb_sources:                # DICOMweb servers polled for new series (QIDO-RS, WADO-RS)
  - name: pacs-web
    url: https://pacs.example.org/dicom-web
    credentials: secrets/pacs-web.yaml   # "username: ..." and "password: ...", or
                                 # "token: ..." (a bearer token); chmod 600, or it is refused
    poll_seconds: 60
    filters: {Modality: MR}      # QIDO-RS keys (Modality, BodyPartExamined, ...), exact values
    since: "20250101"            # first poll: StudyDate from this day (default: today - lookback)
    lookback_days: 1             # later polls: from this many days before the last good poll
formats: [dicom-seg, rtstruct]   # dicom-seg, rtstruct, nifti (nifti goes to folders only)
statistics: false                # measurements per structure (JSON + CSV; folders only)
preview: false                   # a three-plane PNG per series (folders only)
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
    """Where results go: a C-STORE SCP (``ae_title``, ``host``, ``port``), a ``folder``,
    or a DICOMweb server's STOW-RS (``url``, ``credentials``)."""

    name: str
    ae_title: str | None = None
    host: str | None = None
    port: int | None = None
    folder: Path | None = None
    url: str | None = None
    credentials: Path | None = None

    @property
    def is_folder(self) -> bool:
        return self.folder is not None

    @property
    def is_dicomweb(self) -> bool:
        return self.url is not None


@dataclass(frozen=True)
class DicomwebSource:
    """A DICOMweb server polled every ``poll_seconds`` for new series.

    ``filters``: QIDO-RS search keys and values (``(("Modality", "MR"),)``); ``since``:
    the first poll's lowest StudyDate (``YYYYMMDD``; None: today); later polls start
    ``lookback_days`` before the date of the last successful poll.
    """

    name: str
    url: str
    credentials: Path | None = None
    poll_seconds: float = 60.0
    filters: tuple[tuple[str, str], ...] = ()
    since: str | None = None
    lookback_days: int = 1


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
    statistics: bool = False
    preview: bool = False
    retry: Retry = field(default_factory=Retry)
    prediction: Prediction = field(default_factory=Prediction)
    dicomweb_sources: tuple[DicomwebSource, ...] = ()

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


def _path(value: str | None, base: Path) -> Path | None:
    return None if value is None else (base / value).resolve()


def _url(where: str, url: str) -> str:
    """``url`` without a trailing slash; refused (never echoed) if it holds a user or password."""
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        raise ServeConfigError(
            f"{where}.url: holds a user name or password; remove them from the URL and put "
            "them in the credentials file (chmod 600)"
        )
    return url.rstrip("/")


def _destination(i: int, raw: dict, base: Path) -> Destination:
    if "folder" in raw:
        return Destination(raw["name"], folder=_path(raw["folder"], base))
    if "url" in raw:
        url = _url(f"destinations[{i}]", raw["url"])
        return Destination(raw["name"], url=url, credentials=_path(raw.get("credentials"), base))
    return Destination(raw["name"], raw["ae_title"], raw["host"], raw["port"])


def _source(i: int, raw: dict, base: Path) -> DicomwebSource:
    since = raw.get("since")
    if since is not None:
        try:
            datetime.datetime.strptime(since, "%Y%m%d")
        except ValueError:
            raise ServeConfigError(
                f"dicomweb_sources[{i}].since: {since!r} is not a date; write YYYYMMDD, "
                "e.g. '20250101'"
            ) from None
    return DicomwebSource(
        name=raw["name"],
        url=_url(f"dicomweb_sources[{i}]", raw["url"]),
        credentials=_path(raw.get("credentials"), base),
        poll_seconds=float(raw.get("poll_seconds", 60)),
        filters=tuple(sorted(raw.get("filters", {}).items())),
        since=since,
        lookback_days=raw.get("lookback_days", 1),
    )


def _unique(where: str, key: str, names: list[str]) -> None:
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ServeConfigError(f"{where}: {key}: name {twice[0]!r} is used twice")


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
    _unique(where, "destinations", [d["name"] for d in document["destinations"]])
    raw_sources = document.get("dicomweb_sources", [])
    _unique(where, "dicomweb_sources", [s["name"] for s in raw_sources])
    try:
        routes = tuple(_route(i, r, models) for i, r in enumerate(document["routes"]))
        sources = tuple(_source(i, s, base) for i, s in enumerate(raw_sources))
        destinations = tuple(
            _destination(i, d, base) for i, d in enumerate(document["destinations"])
        )
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
        destinations=destinations,
        formats=tuple(OutputFormat(f) for f in document.get("formats", ["dicom-seg"])),
        statistics=bool(document.get("statistics", False)),
        preview=bool(document.get("preview", False)),
        retry=Retry(
            tuple(float(s) for s in retry.get("backoff_seconds", Retry.backoff_seconds)),
            retry.get("max_attempts", Retry.max_attempts),
        ),
        prediction=Prediction(**prediction),
        dicomweb_sources=sources,
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
