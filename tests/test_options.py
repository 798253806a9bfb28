"""One list of valid values per option, shared by the CLI, the code and the workflow schema."""

from __future__ import annotations

import pytest
import yaml
from conftest import ROOT

from medseg.cli.main import build_parser
from medseg.core.errors import UsageError
from medseg.core.options import Blend, ConfigurationName, Engine, OutputFormat, parse, values
from medseg.planning.planner import CONFIGURATIONS


def _schema() -> dict:
    return yaml.safe_load((ROOT / "pipelines" / "schemas" / "config.schema.yaml").read_text())


def test_workflow_schema_uses_the_same_lists():
    props = _schema()["properties"]
    assert tuple(props["configurations"]["items"]["enum"]) == values(ConfigurationName)
    test_formats = props["test"]["properties"]["formats"]["items"]["enum"]
    assert tuple(test_formats) == values(OutputFormat)
    assert CONFIGURATIONS == values(ConfigurationName)


def test_cli_choices_are_the_option_lists():
    predict = build_parser()._subparsers._group_actions[0].choices["predict"]
    choices = {a.dest: tuple(a.choices) for a in predict._actions if a.choices}
    assert choices["formats"] == values(OutputFormat)
    assert choices["engine"] == values(Engine) and choices["blend"] == values(Blend)


def test_strings_from_the_boundary_become_members():
    assert parse(Engine, "openvino", "--engine") is Engine.OPENVINO
    assert OutputFormat.NIFTI == "nifti" and {"nifti": 1}[OutputFormat.NIFTI] == 1
    with pytest.raises(UsageError, match="--engine: 'onnx' is not one of auto, torch, openvino"):
        parse(Engine, "onnx", "--engine")
