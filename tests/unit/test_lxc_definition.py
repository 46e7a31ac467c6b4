"""The config a destination writes for a received LXC container (lxdmig/lxc_definition.py), and what
liblxc itself reads from it."""

from __future__ import annotations

import ctypes
import ctypes.util
from pathlib import Path

import pytest

from lxdmig import prepare
from lxdmig.liblxc_syntax import liblxc_lines, mount_fields
from lxdmig.lxc_definition import PREPARE_WAS, Allotment, Reader, subordinate_ranges

OWN, SOURCE = "/var/lib/lxc/c1", "/srv/lxc/c1"
HERE = Allotment(uids=((100000, 65536),), gids=((100000, 65536),), bridges=frozenset({"br0"}))
IDMAP = "lxc.idmap = u 0 100000 65536\nlxc.idmap = g 0 100000 65536\n"
BASE = f"lxc.rootfs.path = dir:{SOURCE}/rootfs\n" + IDMAP


def judge(text: str, allotment: Allotment = HERE, base: str = BASE):  # type: ignore[no-untyped-def]
    return Reader(allotment, own_dir=OWN, source_dir=SOURCE).judge(base + text)


def refusal(line: str, allotment: Allotment = HERE) -> str:
    judged = judge(line + "\n", allotment)
    assert len(judged.refusals) == 1, (line, judged.refusals)
    return judged.refusals[0]


def test_a_debian_container_is_written_again_for_this_host() -> None:
    text = f"""# Template used to create this container: /usr/share/lxc/templates/lxc-download
lxc.include = /usr/share/lxc/config/common.conf
lxc.include = /usr/share/lxc/config/userns.conf
lxc.arch = linux64
{IDMAP}lxc.rootfs.path = dir:{SOURCE}/rootfs
lxc.uts.name = c1
lxc.net.0.type = veth
lxc.net.0.link = br0
lxc.net.0.flags = up
lxc.net.0.hwaddr = 00:16:3e:aa:bb:cc
lxc.net.0.ipv4.address = 198.51.100.50/24
lxc.apparmor.profile = generated
lxc.apparmor.allow_nesting = 1
lxc.tty.max = 0
lxc.console.path = none
lxc.seccomp.profile = {SOURCE}/lxdmig-seccomp.policy
lxc.mount.entry = /sys/fs/fuse/connections sys/fs/fuse/connections none bind,optional 0 0
lxc.environment = container=lxc
"""
    judged = judge(text, base="")
    assert judged.refusals == []
    assert f"lxc.rootfs.path = dir:{OWN}/rootfs" in judged.lines
    assert f"lxc.seccomp.profile = {OWN}/lxdmig-seccomp.policy" in judged.lines
    assert 'lxc.environment = "container=lxc"' in judged.lines
    assert "lxc.net.0.link = br0" in judged.lines
    absolute = judge(f"lxc.mount.entry = tmpfs {SOURCE}/rootfs/run/x tmpfs rw 0 0\n")
    assert absolute.refusals == [] and "lxc.mount.entry = tmpfs run/x tmpfs rw 0 0" in absolute.lines
    # (Comments, which liblxc ignores, stay: lxdmig prepare marks its lines with them.)
    assert judged.lines[0] == "# Template used to create this container: /usr/share/lxc/templates/lxc-download"


def test_lines_lxdmig_prepare_commented_out_are_judged_as_its_undo_would_make_them() -> None:
    prepared = prepare.set_line(BASE + "lxc.tty.max = 4\n", "lxc.tty.max", "0")
    judged = judge(prepared, base="")
    assert judged.refusals == []
    assert prepare.unset_lines(judged.text()).splitlines()[-1] == "lxc.tty.max = 4"
    assert PREPARE_WAS == prepare.WAS
    # A commented-out id map maps nothing: still a privileged container.
    commented = judge(f"{prepare.WAS}lxc.idmap = b 0 100000 65536)\n", base=f"lxc.rootfs.path = dir:{SOURCE}/rootfs\n")
    assert any("a privileged container" in r for r in commented.refusals), commented.refusals
    hostile = judge(f"{prepare.WAS}lxc.hook.pre-start = /bin/sh -c id)\n")
    assert hostile.refusals == [f"{prepare.WAS}lxc.hook.pre-start = /bin/sh -c id) (lxdmig prepare --undo would "
                                "make it live): lxc.hook.pre-start = /bin/sh -c id: runs a program as root on this "
                                "host"], hostile.refusals


@pytest.mark.parametrize(("line", "why"), [
    # Shell in a hook, any hook: liblxc runs them through /bin/sh -c.
    ("lxc.hook.pre-start = /bin/true", "runs a program as root"),
    ("lxc.hook.stop = /proc/1/exe callhook /var/lib/lxd x; touch /tmp/p", "runs a program as root"),
    ("lxc.net.0.script.up = /tmp/x", "runs a program as root"),
    # Keys liblxc takes by prefix, and keys lxdmig does not know.
    ("lxc.idmapX = u 0 0 1", "not a key lxdmig lets a peer set"),
    ("lxc.net.00.type = phys", "not a key lxdmig lets a peer set"),
    ("lxc.cgroup.dir = ../..", "names the container's cgroups"),
    ("lxc.cgroup.dir.container = ../../x", "names the container's cgroups"),
    ("lxc.cgroup2.cgroup.procs = 1", "not a key lxdmig lets a peer set"),
    ("lxc.namespace.share.net = 1", "not a key lxdmig lets a peer set"),
    ("lxc.namespace.clone = mount pid", "share namespaces of this host"),
    # Host paths, with quotes stripped and relative sources as liblxc has them.
    ("lxc.mount.entry = '/ mnt/host none bind 0 0'", "names /, outside the container's directory"),
    ('lxc.mount.entry = "/etc mnt none bind,ro 0 0"', "names /etc, outside"),
    ("lxc.mount.entry = etc mnt none bind 0 0", "a relative path"),
    ("lxc.mount.entry = . mnt none rbind 0 0", "a relative path"),
    (f"lxc.mount.entry = {SOURCE}/../../../etc mnt none bind 0 0", "names /var/etc, outside"),
    ("lxc.mount.entry = /dev/sda1 mnt ext4 rw 0 0", "only kernel file systems"),
    ("lxc.mount.entry = none mnt overlay lowerdir=/etc 0 0", "mount option"),
    ("lxc.mount.entry = tmpfs ../../etc tmpfs rw 0 0", "target is not a path inside"),
    ("lxc.mount.entry = tmpfs /etc tmpfs rw 0 0", "target is not a path inside"),
    ("lxc.mount.entry = usr mnt none bind,relative 0 0", "mount option 'relative'"),
    ("lxc.mount.auto = 'shmounts:/etc'", "shmounts"),
    ("lxc.mount.fstab = /etc/fstab", "reads mounts from a file"),
    ("lxc.include = /etc/lxc/other.conf", "a file outside /usr/share/lxc/config"),
    ("lxc.include = /usr/share/lxc/config/../../../../etc/x", "a file outside /usr/share/lxc/config"),
    ("lxc.log.file = /etc/passwd", "outside the container's directory"),
    ("lxc.console.path = /dev/tty1", "not one of"),
    ("lxc.rootfs.path = dir:/", "not the root filesystem received"),
    ("lxc.rootfs.options = idmap=/proc/1/ns/user", "mount option"),
    ("lxc.rootfs.mount = /etc", "where the root filesystem is mounted"),
    # The container's confinement, which the destination chooses.
    ("lxc.idmap = u 0 0 65536", "not all in a range root's /etc/subuid gives"),
    ("lxc.idmap = g 0 1000 65536", "not all in a range root's /etc/subgid gives"),
    ("lxc.cap.keep = sys_admin sys_module", "this host's own drops"),
    ("lxc.cap.drop =", "clears this host's"),
    ("lxc.cgroup2.devices.allow = a", "opens a device of this host"),
    ("lxc.cgroup.devices.allow = b 8:0 rwm", "opens a device of this host"),
    ("lxc.cgroup2.devices.deny =", "clears this host's"),
    ("lxc.apparmor.profile = unconfined", "run unconfined"),
    ("lxc.apparmor.profile = /usr/sbin/cupsd", "a profile of the peer's choosing"),
    ("lxc.apparmor.raw = mount,", "the peer's own rules"),
    ("lxc.apparmor.allow_incomplete = 1", "not one of"),
    ("lxc.sysctl.kernel.modprobe = /tmp/x", "not a sysctl of the container's own"),
    ("lxc.environment = PATH", "a bare NAME passes this host's environment"),
    # Interfaces and routes of this host.
    ("lxc.net.1.type = macvlan", "takes a network interface of this host"),
    ("lxc.net.1.type = phys", "takes a network interface of this host"),
    ("lxc.net.0.link = eth0", "not a bridge on this host"),
    ("lxc.net.0.veth.ipv4.route = 0.0.0.0/0", "adds routes to this host"),
    ("lxc.net.0.veth.mode = router", "not one of"),
    ("lxc.net.0.l2proxy = 1", "not one of"),
])
def test_what_a_peer_may_not_set_is_refused_with_its_key(line: str, why: str) -> None:
    found = refusal(line)
    assert found.startswith(liblxc_lines(line)[0][0] + " = "), found
    assert why in found, found


def test_a_privileged_container_needs_the_operators_leave() -> None:
    text = f"lxc.rootfs.path = dir:{SOURCE}/rootfs\n"
    assert "a privileged container is root on this host" in " ".join(judge(text, base="").refusals)
    allowed = Allotment(HERE.uids, HERE.gids, HERE.bridges, allow_privileged=True)
    assert judge(text, allowed, base="").refusals == []
    # Even then, not with /proc and /sys writable.
    assert "proc:rw" in " ".join(judge(text + "lxc.mount.auto = proc:rw sys:rw\n", allowed, base="").refusals)
    assert judge(text + "lxc.mount.auto = proc:rw sys:rw\n", base=IDMAP).refusals == []  # (in a user namespace)


def test_a_config_without_a_root_filesystem_is_refused() -> None:
    assert "liblxc would run the container on this host's /" in " ".join(judge("", base=IDMAP).refusals)


def test_the_operator_allows_a_key_or_one_value_of_it() -> None:
    one = Allotment(HERE.uids, HERE.gids, HERE.bridges, allow_keys=("lxc.apparmor.profile=unconfined",))
    assert judge("lxc.apparmor.profile = unconfined\n", one).refusals == []
    assert judge("lxc.apparmor.profile = /usr/sbin/cupsd\n", one).refusals != []
    every = Allotment(HERE.uids, HERE.gids, HERE.bridges, allow_keys=("lxc.apparmor.profile",))
    assert judge("lxc.apparmor.profile = /usr/sbin/cupsd\n", every).refusals == []


def test_subordinate_ranges_are_roots() -> None:
    text = "alice:100000:65536\nroot:165536:65536\n0:300000:10\n_lxd:1:2\nroot:bad:1\n"
    assert subordinate_ranges(text) == ((165536, 65536), (300000, 10))


# --- liblxc reads what the helper wrote, and it means what lxdmig judged ---------------------------------

class _MntEnt(ctypes.Structure):
    _fields_ = [("mnt_fsname", ctypes.c_char_p), ("mnt_dir", ctypes.c_char_p), ("mnt_type", ctypes.c_char_p),
                ("mnt_opts", ctypes.c_char_p), ("mnt_freq", ctypes.c_int), ("mnt_passno", ctypes.c_int)]


def _getmntent(path: Path) -> list[list[str]]:
    """What glibc's getmntent (liblxc's reader of mount entries) makes of a file of them."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.setmntent.restype = ctypes.c_void_p
    libc.getmntent.restype = ctypes.POINTER(_MntEnt)
    libc.getmntent.argtypes = libc.endmntent.argtypes = [ctypes.c_void_p]
    stream = libc.setmntent(str(path).encode(), b"r")
    out = []
    while entry := libc.getmntent(stream):
        e = entry.contents
        out.append([x.decode() for x in (e.mnt_fsname, e.mnt_dir, e.mnt_type, e.mnt_opts)])
    libc.endmntent(stream)
    return out


def _liblxc_item(config: Path, key: str) -> str:
    from lxdmig.backends._liblxc import ffi, lib  # (compiled when lxdmig is installed)

    container = lib.lxc_container_new(config.parent.name.encode(), str(config.parent.parent).encode())
    assert container != ffi.NULL
    try:
        size = container.get_config_item(container, key.encode(), ffi.NULL, 0)
        buf = ffi.new("char[]", max(size, 0) + 1)
        container.get_config_item(container, key.encode(), buf, size + 1)
        return ffi.string(buf).decode()
    finally:
        lib.lxc_container_put(container)


@pytest.mark.host
def test_liblxc_reads_the_written_config_as_lxdmig_judged_it(tmp_path: Path) -> None:
    own = tmp_path / "c1"
    (own / "rootfs").mkdir(parents=True)
    (own / "data dir").mkdir()
    peer = f"""lxc.rootfs.path = "dir:{SOURCE}/rootfs"
\t lxc.uts.name =\t'c1'
lxc.mount.entry = '{SOURCE}/data\\040dir srv/data none bind,create=dir 0 0'
lxc.mount.entry = tmpfs\tdev/shm tmpfs rw,nosuid,size=65536k 0 0
lxc.environment = "GREETING='hello there'"
lxc.init.cmd = '"/sbin/init" --log-level=info'
{IDMAP}"""
    judged = Reader(HERE, own_dir=str(own), source_dir=SOURCE, resolve=str).judge(peer)
    assert judged.refusals == []
    config = own / "config"
    config.write_text(judged.text())
    entries = tmp_path / "entries"
    entries.write_text(_liblxc_item(config, "lxc.mount.entry"))
    assert _getmntent(entries) == [[f"{own}/data dir", "srv/data", "none", "bind,create=dir"],
                                   ["tmpfs", "dev/shm", "tmpfs", "rw,nosuid,size=65536k"]]
    assert mount_fields(f"{SOURCE}/data\\040dir srv/data none") == [f"{SOURCE}/data dir", "srv/data", "none"]
    assert _liblxc_item(config, "lxc.rootfs.path") == f"{own}/rootfs"  # (liblxc drops "dir:")
    assert _liblxc_item(config, "lxc.uts.name") == "c1"
    assert _liblxc_item(config, "lxc.environment").strip() == "GREETING='hello there'"
    assert _liblxc_item(config, "lxc.init.cmd") == '"/sbin/init" --log-level=info'
    assert _liblxc_item(config, "lxc.idmap").split("\n")[:2] == ["u 0 100000 65536", "g 0 100000 65536"]
