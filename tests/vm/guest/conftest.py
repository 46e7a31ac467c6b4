"""Inside the VM: the same two-host test bed fixtures as on the host, with helpers that receive
privileged containers (the containers here are privileged; hardened mode refuses them by default, and
an operator lets them in with allow_privileged)."""

import os
from collections.abc import Iterator

import pytest

from testbed import helpers
from testbed.layout import Host
from tests.integration.conftest import make_container, testbed  # noqa: F401

os.environ[helpers.PRIVILEGED_ENV] = "1"  # (every helper the test bed starts here, restarts included)


@pytest.fixture
def privileged() -> bool:
    """Pre-copy and hybrid are proven on privileged containers in the VM; unprivileged ones there are
    not tried yet (docs/system-containers.md, "What runs where")."""
    return True


@pytest.fixture(scope="session", autouse=True)
def privileged_allowed(testbed: None) -> Iterator[None]:  # noqa: F811 (the fixture imported above)
    """Helpers started before this session's setting (a test bed already up) restarted with it."""
    for host in (Host("a"), Host("b")):
        helpers.restart(host)
    yield
