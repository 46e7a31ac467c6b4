"""Commands lxdmig runs inside a container (``lxdmig prepare``'s systemctl) get none of root's environment.

lxc-attach passes the caller's environment into the container by default:
a proxy URL with its password, cloud credentials, whatever root had. The
container's root could read them from /proc. lxdmig attaches with
``--clear-env`` and PATH alone (``prepare.attach_argv``); here on a real
container of the test bed.
"""

from __future__ import annotations

import os
import subprocess

from lxdmig import prepare
from testbed.containers import host_argv
from testbed.layout import Host

from .conftest import MakeContainer

A = Host("a")


def test_a_command_run_in_the_container_sees_no_variable_of_roots(make_container: MakeContainer) -> None:
    name = make_container("a", memory_mib=8)
    secret = "http://operator:hunter2@proxy.example:3128"
    argv = host_argv(A, *prepare.attach_argv(A.lxcpath, name, ["/bin/busybox", "env"]))
    seen = subprocess.run(argv, env={**os.environ, "http_proxy": secret, "LXDMIG_CANARY": "x"}, capture_output=True,
                          text=True, timeout=60, check=True).stdout
    assert "hunter2" not in seen and "LXDMIG_CANARY" not in seen, seen
    assert f"PATH={prepare.ATTACH_PATH}" in seen.splitlines(), seen
    # (Without --clear-env, the same command sees them: the test can fail.)
    plain = [a for a in argv if a not in ("--clear-env", "--set-var", f"PATH={prepare.ATTACH_PATH}")]
    leaked = subprocess.run(plain, env={**os.environ, "http_proxy": secret}, capture_output=True, text=True,
                            timeout=60, check=True).stdout
    assert "hunter2" in leaked, leaked
