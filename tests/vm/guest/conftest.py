"""Inside the VM: the same two-host test bed fixtures as on the host."""

from tests.integration.conftest import make_container, testbed  # noqa: F401
