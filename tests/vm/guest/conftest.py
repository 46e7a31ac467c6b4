"""Inside the VM: the same two-host test bed fixtures as on the host."""

import pytest

from tests.integration.conftest import make_container, testbed  # noqa: F401


@pytest.fixture
def privileged() -> bool:
    """Pre-copy and hybrid are proven on privileged containers in the VM; unprivileged ones there are
    not tried yet (docs/system-containers.md, "What runs where")."""
    return True
