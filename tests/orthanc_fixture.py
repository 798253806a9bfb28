"""The ``orthanc`` fixture: a private Orthanc PACS (tests/orthanc_server.py) per module.

Use it from a test module with ``pytest_plugins = ["orthanc_fixture"]``. Where Orthanc
is not installed or does not start, the tests that use it skip with the reason, and
fail instead when ``CI=true`` (like the SLURM cluster of tests/test_slurm.py).
"""

from __future__ import annotations

import orthanc_server
import pytest
from services import unavailable


def _unavailable(reason: str):
    unavailable("Orthanc test PACS", reason)


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    """A running private Orthanc (orthanc_server.Orthanc), stopped after the module."""
    reason = orthanc_server.unavailable()
    if reason:
        _unavailable(reason)
    try:
        server = orthanc_server.start(tmp_path_factory.mktemp("orthanc"))
    except orthanc_server.OrthancError as error:
        _unavailable(str(error))
    try:
        yield server
    finally:
        orthanc_server.stop(server.root)
