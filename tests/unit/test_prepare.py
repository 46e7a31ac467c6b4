"""lxdmig prepare's plan: what it changes, decided from what the preflight found (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lxdmig.prepare import (
    DROPIN,
    DROPIN_SETTINGS,
    DROPIN_TEXT,
    LXD_DENY,
    OURS,
    SECCOMP_FILE,
    UNDO_CONFIG,
    UNDO_LXD_CONFIG,
    WAS,
    config_plan,
    denies_bpf,
    lxd_config_plan,
    plan,
    set_line,
    undo_plan,
    unset_lines,
    with_bpf_denied,
)


def test_a_stock_systemd_container_gets_the_dropin_and_its_sandboxed_services_restarted() -> None:
    changes = plan(systemd=True, dropin_present=False, nested_units=["redis-server.service", "systemd-logind.service"])
    assert [c.what for c in changes] == [
        f"write /{DROPIN} (systemd drop-in for every service: no namespaces of their own)",
        "systemctl daemon-reload", "systemctl restart redis-server.service", "systemctl restart systemd-logind.service"]
    assert all(c.why for c in changes)


def test_nothing_to_do_once_prepared_and_restarts_only_what_still_runs_nested() -> None:
    assert plan(systemd=True, dropin_present=True, nested_units=[]) == []
    assert [c.what for c in plan(systemd=True, dropin_present=True, nested_units=["a.service"])] == [
        "systemctl daemon-reload", "systemctl restart a.service"]
    assert plan(systemd=False, dropin_present=False, nested_units=[]) == []


def test_undo_removes_only_what_prepare_wrote() -> None:
    assert [c.what for c in undo_plan(dropin_present=True)] == [f"remove /{DROPIN}", "systemctl daemon-reload"]
    assert undo_plan(dropin_present=False) == []


def test_the_dropin_turns_off_every_namespace_setting() -> None:
    assert DROPIN_TEXT.splitlines()[3] == "[Service]"
    for setting in ("PrivateUsers=no", "ProtectHostname=no", "PrivateIPC=no", "PrivateNetwork=no", "PrivateTmp=no",
                    "PrivateDevices=no", "ProtectSystem=no", "ReadWritePaths="):
        assert setting in DROPIN_SETTINGS and f"\n{setting}\n" in DROPIN_TEXT


STOCK = [("lxc.tty.max", "4"), ("lxc.seccomp.profile", "/usr/share/lxc/config/common.seccomp"),
         ("lxc.console.path", "")]
COMMON = "2\ndenylist\nreject_force_umount  # comment\n[all]\nkexec_load errno 1\n"


def test_lxc_settings_criu_cannot_checkpoint_are_set() -> None:
    changes = config_plan(STOCK, privileged=False, systemd=True, policy=COMMON, container_dir=Path("/c"))
    assert [c.what for c in changes] == ["set lxc.tty.max = 0", "set lxc.console.path = none"]
    done = [("lxc.tty.max", "0"), ("lxc.console.path", "none")]
    assert config_plan(STOCK + done, privileged=False, systemd=True, policy=COMMON, container_dir=Path("/c")) == []


def test_a_privileged_systemd_container_gets_bpf_denied_on_top_of_its_policy() -> None:
    [change] = config_plan([("lxc.console.path", "none")], privileged=True, systemd=True, policy=COMMON,
                           container_dir=Path("/c"))
    assert change.what == f"set lxc.seccomp.profile = /c/{SECCOMP_FILE}"
    policy = with_bpf_denied(COMMON)
    assert policy.startswith(COMMON) and denies_bpf(policy) and not denies_bpf(COMMON)
    assert denies_bpf(with_bpf_denied(None))
    assert config_plan([("lxc.console.path", "none")], privileged=True, systemd=True, policy=policy,
                       container_dir=Path("/c")) == []
    with pytest.raises(ValueError, match="deny list"):
        with_bpf_denied("2\nallowlist\nread\n")


def test_config_lines_are_marked_and_undone_exactly() -> None:
    original = "lxc.include = /usr/share/lxc/config/common.conf\nlxc.tty.max = 4\n# lxc.tty.max = 9\nlxc.uts.name = c\n"
    changed = set_line(set_line(original, "lxc.tty.max", "0"), "lxc.console.path", "none")
    assert changed.splitlines()[1:3] == [f"{WAS}lxc.tty.max = 4)", "# lxc.tty.max = 9"]
    assert changed.endswith(f"{OURS}\nlxc.tty.max = 0\n{OURS}\nlxc.console.path = none\n")
    assert unset_lines(changed) == original
    assert [c.what for c in undo_plan(dropin_present=False, config_undo=UNDO_CONFIG)] == [UNDO_CONFIG]


def test_a_privileged_lxd_instance_gets_bpf_added_to_lxds_deny_list() -> None:
    privileged = {"security.privileged": "true"}
    [change] = lxd_config_plan(privileged, systemd=True)
    assert change.what == f"set {LXD_DENY} += bpf errno 1"
    assert lxd_config_plan({**privileged, LXD_DENY: "kexec_load errno 1\nbpf errno 1\n"}, systemd=True) == []
    assert lxd_config_plan({**privileged, LXD_DENY: "kexec_load errno 1\n"}, systemd=True) == [change]
    assert lxd_config_plan({}, systemd=True) == []  # unprivileged: its systemd cannot load BPF programs
    assert lxd_config_plan(privileged, systemd=False) == []
    with pytest.raises(ValueError, match="raw.seccomp"):
        lxd_config_plan({**privileged, "raw.seccomp": "2\nallowlist\n"}, systemd=True)
    assert [c.what for c in undo_plan(dropin_present=False, config_undo=UNDO_LXD_CONFIG)] == [UNDO_LXD_CONFIG]
