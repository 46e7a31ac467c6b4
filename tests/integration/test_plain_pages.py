"""--page-transport plain: memory pages over a plain TCP connection lxdmig authenticates.

The test bed's helpers take plain pages (``[helper] plain_pages = true``);
lxdmig's default is TLS. Moves both ways in both host modes, with the
workload's checks; a helper that takes TLS only is named by the preflight
before anything is frozen. (Pre-copy and hybrid over the plain connection
run in the VM: tests/vm/guest/test_precopy.py. Faults: test_faults.py.)
"""

from __future__ import annotations

import pytest

from lxdmig.errors import ExitCode
from testbed import containers, helpers

from .conftest import MakeContainer
from .test_move import A, B, check_moved, fresh_gap, move

PLAIN = ("--page-transport", "plain")


@pytest.mark.parametrize("mode", ["stop-copy", "post-copy"])
def test_plain_pages_there_and_back(make_container: MakeContainer, mode: str) -> None:
    name = make_container("a", memory_mib=64, dirty_rate=2.0)
    before = fresh_gap(A, name)
    rc, report, err = move(A, name, B, "--mode", mode, *PLAIN)
    assert rc == 0 and report is not None, err
    assert any("unencrypted" in w for w in report["warnings"])  # type: ignore[union-attr]
    if mode == "post-copy":
        assert int(str(report["final_pages_lazy"])) > 64 * 256 * 0.9  # fetched over the plain connection
    else:
        assert int(str(report["final_pages_written"])) > 64 * 256 * 0.9
    check_moved(before, A, B, name, report)

    middle = fresh_gap(B, name)
    rc, report, err = move(B, name, A, "--mode", mode, *PLAIN)
    assert rc == 0 and report is not None, err
    check_moved(middle, B, A, name, report)


def test_a_helper_that_takes_tls_only_is_named_before_anything_is_frozen(make_container: MakeContainer) -> None:
    name = make_container("a", memory_mib=16)
    before = fresh_gap(A, name)
    with helpers.tls_pages_only(B):
        rc, report, err = move(A, name, B, "--mode", "post-copy", *PLAIN)
    assert rc == ExitCode.PREFLIGHT, err
    assert "b's helper takes memory pages over TLS only" in err and "plain_pages" in err
    after = fresh_gap(A, name)
    assert after["incarnation"] == before["incarnation"] and containers.lxc_state(A, name) == "RUNNING"
    assert float(str(after["max_gap_ms"])) < 200, "it was frozen (a dump takes more than that)"
    assert name not in containers.list_containers(B)
