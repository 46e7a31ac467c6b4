"""Integration fixtures: the real two-host test bed.

The session brings the test bed up if it is not up already and takes it
down again at the end if it brought it up. Containers made through
``make_container`` are destroyed after each test, whatever the outcome.
"""

from __future__ import annotations

import itertools
import os
import signal
import time
from collections.abc import Callable, Iterator

import pytest

from testbed import bed, containers, hosts
from testbed.containers import host_command
from testbed.layout import Host

HOST_A = Host("a")

pytestmark = pytest.mark.integration

_names = itertools.count()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


# A suite started in the background of a shell without job control inherits SIGINT ignored, and so
# would every lxdmig it starts: the tests that interrupt a move need lxdmig to take it, as it does
# when an operator presses Ctrl-C.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def testbed() -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.fail("integration tests need root (they create namespaces, containers and cgroups)")
    was_up = hosts.is_up()
    bed.up()
    try:
        yield
    finally:
        if not was_up:
            bed.down()


MakeContainer = Callable[..., str]


@pytest.fixture
def privileged() -> bool:
    """Whether make_container makes privileged containers (the test bed's default is unprivileged)."""
    return False


@pytest.fixture
def make_container(testbed: None, privileged: bool) -> Iterator[MakeContainer]:
    made: list[tuple[Host, str]] = []

    def make(host: str = "a", name: str | None = None, memory_mib: int = 16, dirty_rate: float = 1.0,
             extra_config: str = "") -> str:
        name = name or f"t{os.getpid() % 10000}-{next(_names)}"
        h = Host(host)
        made.append((h, name))
        containers.create(h, name, containers.WorkloadSpec(memory_mib, dirty_rate), extra_config,
                          privileged=privileged)
        return name

    yield make
    for _, name in made:
        for h in (Host("a"), Host("b")):  # (a test may have moved it, and not taken it back)
            containers.destroy(h, name)


def wait_until(predicate: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {seconds:g} s")
        time.sleep(0.005)


def echo_answers(name: str, where: Host = HOST_A) -> bool:
    """Whether the container (configured on ``where``) answers on its echo service, asked from host a."""
    address = containers.container_address(where, name)
    echo = host_command(Host("a"), ["sh", "-c", f"echo lxdmig | busybox nc -w 2 {address} {containers.ECHO_PORT}"],
                        check=False)
    return echo.stdout.strip() == "lxdmig"
