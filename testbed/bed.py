"""The whole test bed in one call: hosts, workload binary, page-pipe sysctl, helpers."""

from __future__ import annotations

import logging
from pathlib import Path

from lxdmig.capabilities import LAZY_PIPE_BYTES
from testbed import containers, helpers, hosts, lxd
from testbed.layout import all_hosts

log = logging.getLogger(__name__)

_PIPE_MAX = Path("/proc/sys/fs/pipe-max-size")


def allow_lazy_pipes() -> None:
    """Raise fs.pipe-max-size so CRIU can size its lazy-page pipes (post-copy).

    The kernel setting is machine-wide (not per namespace). Without it and
    without CAP_SYS_RESOURCE, post-copy fails; operators set it through
    sysctl.d (see docs), the test bed sets it for the running kernel.
    """
    if int(_PIPE_MAX.read_text()) < LAZY_PIPE_BYTES:
        _PIPE_MAX.write_text(str(LAZY_PIPE_BYTES))
        log.warning("fs.pipe-max-size raised to %d for CRIU's lazy pages", LAZY_PIPE_BYTES)


def up() -> None:
    hosts.up()
    containers.build_workload()
    allow_lazy_pipes()
    helpers.up()


def down() -> None:
    helpers.down()
    for host in all_hosts():
        for kind in (lxd.LXD, lxd.INCUS):
            lxd.stop(host, kind)
    hosts.down()
    lxd.CONSOLE_DROP_IN.unlink(missing_ok=True)
