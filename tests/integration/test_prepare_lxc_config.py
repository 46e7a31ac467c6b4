"""`lxdmig prepare` on LXC settings CRIU cannot checkpoint, on real Debian 12 system containers.

A container configured as LXC's templates configure it (LXC's common.conf and userns.conf: four ttys
and a console lent by the host, LXC's seccomp policy): the preflight names the settings (it reads the
config as liblxc does, includes followed); ``lxdmig prepare`` sets them and says that the container
must restart, restarts nothing until told ``--restart``; then the container moves a -> b -> a, and
``--undo`` puts the config back as it was. A privileged container's systemd loads BPF programs, which
CRIU cannot dump: ``lxdmig prepare --restart`` denies it bpf() through a seccomp policy.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from lxdmig import kernel, prepare, uffd_sysctl
from lxdmig.backends.lxc_rules import read_config
from testbed import containers
from testbed.helpers import run_lxdmig as lxdmig
from testbed.layout import Host

A, B = Host("a"), Host("b")


@pytest.fixture
def name(testbed: None) -> Iterator[str]:
    with containers.removed_after(f"stk{os.getpid() % 10000}", A, B) as name:
        yield name


def fails(host: Host, name: str) -> list[str]:
    result = lxdmig(host, "check", "b" if host == A else "a", name)
    return [line for line in result.stdout.splitlines() if line.startswith("fail")]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_template_configured_container_is_prepared_restarted_moved_and_undone(name: str) -> None:
    containers.create_system(A, name, "debian-12", stock=True)
    config = A.lxcpath / name / "config"
    original = config.read_text()
    # (The test bed's LXD daemons, while up, add an LXC drop-in that already takes the console away.)
    console = dict(read_config(config)).get("lxc.console.path", "") != "none"
    found = "\n".join(fails(A, name))
    assert "lxc.tty.max = 4" in found and ("lxc.console.path" in found) == console, found

    init_before = containers.attach(A, name, "cat", "/proc/1/stat").split()[21]  # its start time
    first = lxdmig(A, "prepare", name)
    assert first.returncode == 0, first.stderr
    assert "set lxc.tty.max = 0" in first.stdout and ("set lxc.console.path = none" in first.stdout) == console
    assert f"{name} must restart" in first.stdout
    assert containers.attach(A, name, "cat", "/proc/1/stat").split()[21] == init_before  # not restarted
    # Not in effect yet: the running container still has its ttys, and the preflight says so.
    [lent] = [line for line in fails(A, name) if "still has the terminals it started with" in line]
    assert "/dev/tty1" in lent and ("/dev/console" in lent) == console, lent
    pending = lxdmig(A, "prepare", name)
    assert pending.returncode == 0 and f"{name} must restart" in pending.stdout, pending.stdout

    second = lxdmig(A, "prepare", name, "--restart")
    assert second.returncode == 0, second.stderr
    assert f"restart {name}" in second.stdout
    assert fails(A, name) == []
    failed_units = containers.attach(A, name, "systemctl", "--failed", "--plain", "--no-legend")

    host_uffd = uffd_sysctl.SYSCTL.read_text()
    for source, dest, mode in ((A, B, "post-copy"), (B, A, "stop-copy")):
        moved = lxdmig(source, "move", name, f"{dest.name}:{name}", "--mode", mode)
        assert moved.returncode == 0, moved.stderr
        # (The unprivileged lazy restore raised vm.unprivileged_userfaultfd for its restore only.)
        assert uffd_sysctl.SYSCTL.read_text() == host_uffd and not uffd_sysctl.STATE.exists()
        # systemd as it was (this stock config boots `degraded` here: a user namespace cannot mount
        # debugfs), and it still runs jobs.
        assert containers.attach(dest, name, "systemctl", "--failed", "--plain", "--no-legend") == failed_units
        assert containers.attach(dest, name, "sh", "-c", "systemctl restart redis-server && echo ok") == "ok"

    undo = lxdmig(A, "prepare", name, "--undo", "--restart")
    assert undo.returncode == 0, undo.stderr
    assert prepare.UNDO_CONFIG in undo.stdout and f"restart {name}" in undo.stdout
    assert config.read_text() == original
    assert any("lxc.tty.max = 4" in line for line in fails(A, name))


@pytest.mark.timeout(600)
def test_a_privileged_containers_systemd_is_denied_bpf(name: str) -> None:
    containers.create_system(A, name, "debian-12", privileged=True)
    assert any("holds bpf-prog" in line for line in fails(A, name))

    result = lxdmig(A, "prepare", name, "--restart")
    assert result.returncode == 0, result.stderr
    policy = A.lxcpath / name / prepare.SECCOMP_FILE
    assert f"set lxc.seccomp.profile = {policy}" in result.stdout and prepare.denies_bpf(policy.read_text())
    assert containers.attach(A, name, "systemctl", "is-system-running") == "running"
    left = fails(A, name)
    assert not any("bpf" in line for line in left), left
    # What remains: b's hardened mode takes no privileged container unless its operator allows them, and
    # this machine's root without CAP_SYS_RESOURCE cannot read the rlimits of a privileged container's
    # non-root services (see docs/system-containers.md).
    hardened = [line for line in left if line.split()[1] == "hardened"]
    assert len(hardened) == 1 and "a privileged container is root on this host" in hardened[0], left
    left = [line for line in left if line not in hardened]
    assert all("rlimits" in line for line in left) and (bool(left) != kernel.has_cap_sys_resource()), left
