"""The fault matrix's pre-copy and hybrid cells (runs inside the VM: they need soft-dirty tracking).

The cells, and how each is run and checked, are those of
tests/integration/test_faults.py (``VM_MATRIX``): the same injection, the
same checks of what the user saw, where the container runs afterwards and
that nothing was left behind.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.conftest import MakeContainer
from tests.integration.test_faults import VM_MATRIX, Cell, restore_hosts, run_cell  # noqa: F401 (a fixture)

pytestmark = pytest.mark.vm


@pytest.mark.parametrize("cell", VM_MATRIX, ids=[f"{c.label}/{c.phase}/{c.fault}" for c in VM_MATRIX])
def test_fault_in_vm(cell: Cell, make_container: MakeContainer, restore_hosts: None, tmp_path: Path,  # noqa: F811
                     request: pytest.FixtureRequest) -> None:
    run_cell(cell, make_container, tmp_path, request)
