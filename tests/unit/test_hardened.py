"""Hardened mode's rules: what a helper refuses from a peer's container config (pure functions)."""

from __future__ import annotations

import pytest

from lxdmig.hardened import lxc_config_refusals, lxd_definition_refusals
from lxdmig.liblxc_syntax import liblxc_lines

CDIR = "/var/lib/lxc/c1"
ROOTFS = f"{CDIR}/rootfs"

# The test bed's system container config and LXC's template config, as they arrive: nothing refused.
FINE = f"""\
lxc.include = /usr/share/lxc/config/common.conf
lxc.include = /usr/share/lxc/config/userns.conf
lxc.uts.name = c1
lxc.rootfs.path = dir:{ROOTFS}
lxc.init.cmd = /sbin/init
lxc.signal.halt = SIGRTMIN+3
lxc.tty.max = 0
lxc.console.path = none
lxc.mount.auto = proc:mixed sys:mixed cgroup:mixed
lxc.mount.entry = /sys/fs/fuse/connections sys/fs/fuse/connections none bind,optional 0 0
lxc.mount.entry = tmpfs dev/shm tmpfs rw,nosuid,nodev,create=dir 0 0
lxc.mount.entry = {CDIR}/shared mnt/shared none bind,create=dir 0 0
lxc.seccomp.profile = {CDIR}/lxdmig-deny-bpf.seccomp
lxc.log.file = {CDIR}/c1.log
lxc.environment = container=lxc
lxc.cgroup.relative = 1
lxc.cgroup2.memory.max = 1G
lxc.cap.drop = sys_module mac_admin
lxc.idmap = u 0 100000 65536
lxc.idmap = g 0 100000 65536
lxc.net.0.type = veth
lxc.net.0.link = br0
lxc.net.0.ipv4.address = 192.0.2.10/24
lxc.hook.version = 1
"""


def refusals(text: str, **kw: object) -> list[str]:
    # (As lxd.py reads LXD's generated config and raw.lxc: each line as liblxc reads it.)
    return lxc_config_refusals(liblxc_lines(text), rootfs=ROOTFS, own_dirs=[CDIR], **kw)  # type: ignore[arg-type]


def test_the_configs_people_run_pass() -> None:
    assert refusals(FINE) == []


@pytest.mark.parametrize("line,why", [
    ("lxc.hook.pre-start = /bin/touch /tmp/x", "runs a program as root"),
    ("lxc.hook.destroy = /bin/sh -c 'rm -rf /'", "runs a program as root"),
    ("lxc.net.0.script.up = /usr/local/bin/up", "runs a program as root"),
    ("lxc.include = /tmp/evil.conf", "outside /usr/share/lxc/config"),
    ("lxc.include = /usr/share/lxc/config/../../../../tmp/evil.conf", "outside /usr/share/lxc/config"),
    ("lxc.rootfs.path = dir:/", "not the root filesystem received"),
    (f"lxc.rootfs.path = dir:{CDIR}/../c2/rootfs", "not the root filesystem received"),
    ("lxc.mount.entry = /etc host-etc none bind,create=dir 0 0", "mounts /etc, a path of this host"),
    ("lxc.mount.entry = /dev/sda1 mnt ext4 rw 0 0", "mounts /dev/sda1"),
    (f"lxc.mount.entry = {CDIR}/../../.. mnt none bind 0 0", "a path of this host"),
    ("lxc.mount.entry = tmpfs ../../etc tmpfs rw 0 0", "leaves the container's root filesystem"),
    ("lxc.mount.fstab = /etc/fstab", "reads mounts from a file"),
    ("lxc.mount.auto = shmounts:/etc:/mnt", "shares /etc"),
    # What liblxc reads differently from the text: quotes it strips, a relative source it takes from /,
    # an option that names a path.
    ("lxc.mount.entry = '/ mnt none bind 0 0'", "mounts /, a path of this host"),
    ('lxc.mount.entry = "/etc host-etc none bind,create=dir 0 0"', "mounts /etc, a path of this host"),
    ("lxc.mount.entry = etc mnt none bind,create=dir 0 0", "mounts /etc, a path of this host"),
    ("lxc.mount.entry = . mnt none rbind,create=dir 0 0", "mounts /, a path of this host"),
    ("lxc.mount.entry = /\\040etc mnt none bind 0 0", "mounts / etc, a path of this host"),
    ("lxc.mount.entry = overlay mnt overlay lowerdir=/etc,upperdir=x 0 0", "mount option 'lowerdir=/etc'"),
    ("lxc.mount.entry = /etc mnt none bind,relative 0 0", "mount option 'relative'"),
    ('lxc.mount.auto = "shmounts:/etc:/mnt"', "shares /etc"),
    ("lxc.net.0.type = phys", "takes a network interface of this host"),
    ("lxc.net.0.type = none", "network type 'none'"),
    ("lxc.namespace.share.net = 1", "joins a namespace of this host"),
    ("lxc.namespace.keep = net", "keeps namespaces of this host"),
    ("lxc.seccomp.notify.proxy = unix:/run/x.sock", "connects to a socket"),
    ("lxc.seccomp.profile = /etc/shadow", "outside the container's directory"),
    ("lxc.log.file = /etc/ld.so.preload", "outside the container's directory"),
    ("lxc.console.logfile = /root/.bashrc", "outside the container's directory"),
    ("lxc.console.path = /dev/tty1", "a console device of this host"),
    ("lxc.something.new = 1", "not a key lxdmig lets a peer set"),
])
def test_what_a_peer_may_not_ask_for_is_refused_by_name(line: str, why: str) -> None:
    out = refusals(FINE + line + "\n")
    assert len(out) == 1 and out[0].startswith(line.split("=")[0].strip()) and why in out[0], out


def test_only_lxds_own_hook_passes_when_named() -> None:
    prefix = "/proc/42/exe callhook /var/lib/lxd "
    ok = f'lxc.hook.pre-start = {prefix}"default" "c1" start\n'
    assert refusals(ok, hook_prefixes=(prefix,)) == []
    assert refusals(ok) != []
    assert refusals('lxc.hook.pre-start = /proc/43/exe callhook /var/lib/lxd "default" "c1" start\n',
                    hook_prefixes=(prefix,)) != []
    # Anything after LXD's own arguments would run too (liblxc runs hooks through /bin/sh -c).
    for tail in ('"default" "c1" start; touch /tmp/p', '"default" "c1" start $(id)', '"default" "c1$(id)" start',
                 '"default" "c1" start\ttouch'):
        assert refusals(f"lxc.hook.pre-start = {prefix}{tail}\n", hook_prefixes=(prefix,)) != [], tail


def test_lxd_definitions() -> None:
    root = {"root": {"type": "disk", "path": "/", "pool": "default"}}
    nic = {"eth0": {"type": "nic", "network": "lxdbr0"}}
    fine = {"security.privileged": "false", "security.syscalls.deny": "bpf errno 1", "raw.lxc": "lxc.tty.max = 0",
            "limits.memory": "1GiB", "user.note": "x", "volatile.eth0.hwaddr": "00:16:3e:00:00:01"}
    assert lxd_definition_refusals(fine, {**root, **nic}) == []
    bad = lxd_definition_refusals(
        {"raw.idmap": "both 0 0", "raw.apparmor": "mount,", "security.nesting": "true",
         "linux.kernel_modules": "ip_tables"},
        {"host": {"type": "disk", "source": "/etc", "path": "/mnt"}, "kbd": {"type": "unix-char",
                                                                         "source": "/dev/tty0"},
         "gpu": {"type": "gpu"}})
    assert [b.split(":")[0].split(" (")[0] for b in bad] == [
        "config linux.kernel_modules", "config raw.apparmor", "config raw.idmap", "config security.nesting=true",
        "device gpu", "device host", "device kbd"], bad
    assert lxd_definition_refusals({"security.nesting": "true"}, {}, allowed_keys=["security.nesting"]) == []
    # A privileged instance is root here: only where the destination allows them (allow_privileged).
    assert lxd_definition_refusals({"security.privileged": "true"}, {}) != []
    assert lxd_definition_refusals({"security.privileged": "true"}, {}, allowed_keys=["security.privileged"]) == []


def test_a_planted_symlink_is_judged_by_what_it_names(tmp_path: object) -> None:
    import os
    from pathlib import Path
    cdir = Path(str(tmp_path)) / "c1"
    (cdir / "rootfs").mkdir(parents=True)
    (cdir / "rootfs/etc-link").symlink_to("/etc")
    (cdir / "c1.log").symlink_to("/etc/ld.so.preload")
    text = (f"lxc.mount.entry = {cdir}/rootfs/etc-link mnt none bind 0 0\n"
            f"lxc.log.file = {cdir}/c1.log\n")
    out = lxc_config_refusals(liblxc_lines(text), rootfs=str(cdir / "rootfs"), own_dirs=[str(cdir)],
                              resolve=os.path.realpath)
    assert ["mounts /etc, a path of this host" in out[0], "outside the container's directory" in out[1]] == \
        [True, True], out


def test_a_peer_names_only_the_default_profile_unless_the_operator_lists_more() -> None:
    assert lxd_definition_refusals({}, {}, profiles=["default"]) == []
    [refused] = lxd_definition_refusals({}, {}, profiles=["default", "privileged-stuff"])
    assert refused.startswith("profile privileged-stuff: a profile of this host") and \
        "lxd_allow_keys = profiles=privileged-stuff" in refused
    assert lxd_definition_refusals({}, {}, ["profiles=web"], profiles=["web", "default"]) == []
