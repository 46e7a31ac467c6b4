"""CRIU-able busybox containers running the test workload, on a test host."""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from lxdmig import proc
from lxdmig.errors import CommandError
from testbed import images
from testbed.hosts import TestbedError
from testbed.layout import (
    BRIDGE,
    CONTAINER_NET,
    FIRST_CONTAINER_HOST,
    LAST_CONTAINER_HOST,
    Host,
    all_hosts,
    workload_binary,
)

_T = 60.0
BUSYBOX = Path("/bin/busybox")
STATE_IN_CONTAINER = "/var/lib/workload/state"
ECHO_PORT = 7
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


@dataclass(frozen=True)
class WorkloadSpec:
    memory_mib: int = 16
    dirty_rate_mib_s: float = 1.0
    tick_ms: int = 10

    def __post_init__(self) -> None:
        if self.memory_mib < 1:
            raise ValueError("workload memory must be at least 1 MiB")
        if self.dirty_rate_mib_s < 0:
            raise ValueError("dirty rate cannot be negative")
        if self.tick_ms < 1:
            raise ValueError("tick must be at least 1 ms")


def check_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise ValueError(f"invalid container name {name!r}: use lower-case letters, digits and '-'")
    return name


def host_argv(host: Host, *argv: str) -> list[str]:
    """The command line that runs ``argv`` as ``host`` (``testbed exec`` execs it in place, so a signal
    sent to that process reaches ``argv`` itself)."""
    return [sys.executable, "-m", "testbed", "exec", host.name, "--", *argv]


def host_command(host: Host, argv: list[str], *, timeout: float = _T, check: bool = True,
                 output_file: Path | None = None, input_text: str | None = None) -> proc.Completed:
    """Run ``argv`` as ``host`` (its namespaces and cgroups)."""
    return proc.run(
        host_argv(host, *argv),
        timeout=timeout, check=check, output_file=output_file, input_text=input_text,
    )


# --- the workload binary ------------------------------------------------------


def build_workload() -> Path:
    """Compile the workload (static) once per source change."""
    source = resources.files("testbed").joinpath("workload.c").read_bytes()
    digest = hashlib.sha256(source).hexdigest()
    binary = workload_binary()
    stamp = binary.with_suffix(".sha256")
    if binary.exists() and stamp.exists() and stamp.read_text() == digest:
        return binary
    binary.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=binary.parent) as tmp:
        # Compiled aside and renamed into place: a reader never copies a half-written binary.
        src = Path(tmp) / "workload.c"
        src.write_bytes(source)
        proc.run(["gcc", "-O2", "-Wall", "-static", "-o", str(src.with_suffix("")), str(src)], timeout=120)
        os.replace(src.with_suffix(""), binary)
    stamp.write_text(digest)
    return binary


# --- creating containers --------------------------------------------------------


_ADDRESS_RE = re.compile(r"^lxc\.net\.0\.ipv4\.address\s*=\s*([0-9.]+)", re.M)


def _used_addresses() -> set[ipaddress.IPv4Address]:
    used: set[ipaddress.IPv4Address] = set()
    for h in all_hosts():
        for config in h.lxcpath.glob("*/config"):
            used.update(ipaddress.IPv4Address(m.group(1)) for m in _ADDRESS_RE.finditer(config.read_text()))
    return used


def container_address(host: Host, name: str) -> ipaddress.IPv4Address:
    """The address a test container keeps wherever it runs."""
    match = _ADDRESS_RE.search((host.lxcpath / check_name(name) / "config").read_text())
    if not match:
        raise TestbedError(f"container {name} on host {host.name} has no fixed address")
    return ipaddress.IPv4Address(match.group(1))


def _allocate_address() -> ipaddress.IPv4Address:
    used = _used_addresses()
    base = int(CONTAINER_NET.network_address)
    for n in range(FIRST_CONTAINER_HOST, LAST_CONTAINER_HOST + 1):
        addr = ipaddress.IPv4Address(base + n)
        if addr not in used:
            return addr
    raise TestbedError(f"no free container address left in {CONTAINER_NET}")


def _mac_for(addr: ipaddress.IPv4Address) -> str:
    # Locally administered, derived from the address: unique on the segment.
    tail = addr.packed[1:]
    return "02:6c:78:" + ":".join(f"{b:02x}" for b in tail)


def make_rootfs(rootfs: Path, name: str, spec: WorkloadSpec) -> None:
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "usr/local/bin", "etc", "proc", "sys", "dev", "tmp",
              "run", "root", "var/lib/workload"):
        (rootfs / d).mkdir(parents=True, exist_ok=True)
    (rootfs / "tmp").chmod(0o1777)
    shutil.copy2(BUSYBOX, rootfs / "bin/busybox")
    applets = proc.run([str(BUSYBOX), "--list-full"], timeout=_T).stdout.split()
    for applet in applets:
        link = rootfs / applet
        if not link.exists() and not link.is_symlink():
            link.symlink_to("/bin/busybox")
    shutil.copy2(build_workload(), rootfs / "usr/local/bin/lxdmig-workload")
    (rootfs / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (rootfs / "etc/group").write_text("root:x:0:\n")
    (rootfs / "etc/hostname").write_text(f"{name}\n")
    # busybox init starts each entry in its own session (CRIU needs the
    # workload's session leader inside the container's pid namespace).
    # An echo service on TCP port 7 (busybox nc, one cat per connection) lets
    # tests hold a TCP connection to the container across a move.
    (rootfs / "etc/inittab").write_text(
        "::sysinit:/bin/mount -t tmpfs -o mode=1777,size=16m tmpfs /tmp\n"
        f"::once:/usr/local/bin/lxdmig-workload --state {STATE_IN_CONTAINER} --mib {spec.memory_mib} "
        f"--dirty-rate {spec.dirty_rate_mib_s:g} --tick-ms {spec.tick_ms}\n"
        f"::once:/bin/busybox nc -ll -p {ECHO_PORT} -e /bin/cat\n"
    )


# Unprivileged containers map their root to this host uid and gid (and the next 65535 ids), as LXD's
# default does; root on the host may map any range without /etc/subuid.
ID_SHIFT = 100000
ID_COUNT = 65536


def idmap_config() -> str:
    return f"lxc.idmap = u 0 {ID_SHIFT} {ID_COUNT}\nlxc.idmap = g 0 {ID_SHIFT} {ID_COUNT}\n"


def _nic_config(addr: ipaddress.IPv4Address) -> str:
    """A veth on the host's bridge with a MAC and address the container keeps wherever it runs."""
    return (f"lxc.net.0.type = veth\nlxc.net.0.link = {BRIDGE}\nlxc.net.0.name = eth0\nlxc.net.0.flags = up\n"
            f"lxc.net.0.hwaddr = {_mac_for(addr)}\nlxc.net.0.ipv4.address = {addr}/{CONTAINER_NET.prefixlen}\n")


def lxc_config(host: Host, name: str, addr: ipaddress.IPv4Address) -> str:
    """An LXC config CRIU can checkpoint and restore (see docs/testbed.md)."""
    return f"""\
# lxdmig test bed container {name} on host {host.name}
lxc.uts.name = {name}
lxc.rootfs.path = dir:{host.lxcpath / name / 'rootfs'}
lxc.init.cmd = /sbin/init
lxc.signal.halt = SIGUSR2
lxc.tty.max = 0
lxc.pty.max = 0
lxc.console.path = none
lxc.autodev = 1
lxc.mount.auto = proc:mixed sys:ro
lxc.cgroup.relative = 1
lxc.cap.drop = sys_module mac_admin mac_override sys_time
""" + _nic_config(addr)


def create(host: Host, name: str, spec: WorkloadSpec, extra_config: str = "", *,
           privileged: bool = False) -> ipaddress.IPv4Address:
    """Create and start container ``name`` on ``host``; wait for its workload.

    Unprivileged (a user namespace mapping root to ID_SHIFT, the root
    filesystem shifted to match) unless ``privileged``.
    ``extra_config``: LXC config lines appended to the generated ones.
    """
    check_name(name)
    cdir = host.lxcpath / name
    if cdir.exists():
        raise TestbedError(f"container {name} already exists on host {host.name}")
    addr = _allocate_address()
    try:
        cdir.mkdir(parents=True)
        # The container's mapped root must reach its root filesystem (traverse, not list).
        cdir.chmod(0o700 if privileged else 0o711)
        make_rootfs(cdir / "rootfs", name, spec)
        if not privileged:
            images.shift_owners(cdir / "rootfs", ID_SHIFT)
        config = lxc_config(host, name, addr) + ("" if privileged else idmap_config())
        (cdir / "config").write_text(config + extra_config)
        _start(host, name)
        wait_for_workload(host, name)
    except BaseException:
        destroy(host, name)
        raise
    return addr


# --- real system containers (Debian with systemd and packaged services) ------------


def system_config(host: Host, name: str, addr: ipaddress.IPv4Address, *, privileged: bool) -> str:
    """An LXC config for a distribution's systemd container, as LXC and LXD users run them: a devpts of
    its own (sshd, systemd's PrivateDevices=), systemd's cgroup and /sys views, LXD's capability drops
    (sys_rawio makes systemd skip debugfs, which a user namespace cannot mount)."""
    return f"""\
# lxdmig test bed system container {name} on host {host.name}
lxc.uts.name = {name}
lxc.rootfs.path = dir:{host.lxcpath / name / 'rootfs'}
lxc.init.cmd = /sbin/init
lxc.signal.halt = SIGRTMIN+3
lxc.tty.max = 0
lxc.pty.max = 1024
lxc.console.path = none
lxc.autodev = 1
lxc.mount.auto = proc:mixed sys:mixed cgroup:mixed
lxc.environment = container=lxc
lxc.cgroup.relative = 1
lxc.cap.drop = sys_module mac_admin mac_override sys_time sys_rawio
""" + _nic_config(addr) + ("" if privileged else idmap_config())


def stock_config(host: Host, name: str, addr: ipaddress.IPv4Address, *, privileged: bool) -> str:
    """An LXC config as LXC's templates write one (LXC's common.conf and userns.conf: four ttys, a
    console, LXC's seccomp policy), with the test bed's root filesystem, address and cgroup placement:
    what `lxdmig prepare` meets on a container it did not make."""
    return f"""\
# lxdmig test bed container {name} on host {host.name}, configured as LXC's templates do
lxc.include = /usr/share/lxc/config/common.conf
{"" if privileged else "lxc.include = /usr/share/lxc/config/userns.conf"}
lxc.uts.name = {name}
lxc.rootfs.path = dir:{host.lxcpath / name / 'rootfs'}
lxc.cgroup.relative = 1
""" + _nic_config(addr) + ("" if privileged else idmap_config())


def create_system(host: Host, name: str, image: str, *, privileged: bool = False,
                  stock: bool = False) -> ipaddress.IPv4Address:
    """Create and start a system container from a Debian image (built once, cached: testbed.images);
    wait until systemd has finished booting it. ``stock``: with the LXC config LXC's templates write
    (stock_config) instead of the test bed's."""
    check_name(name)
    cdir = host.lxcpath / name
    if cdir.exists():
        raise TestbedError(f"container {name} already exists on host {host.name}")
    rootfs = images.build(image)
    addr = _allocate_address()
    try:
        cdir.mkdir(parents=True)
        cdir.chmod(0o700 if privileged else 0o711)
        images.install_rootfs(rootfs, cdir / "rootfs", uid_shift=0 if privileged else ID_SHIFT)
        (cdir / "rootfs/etc/hostname").write_text(f"{name}\n")
        make_config = stock_config if stock else system_config
        (cdir / "config").write_text(make_config(host, name, addr, privileged=privileged))
        _start(host, name)
        # systemctl fails ("Failed to connect to bus") until systemd has made its socket: slow under
        # the VM's emulation.
        deadline = time.monotonic() + 300
        while (state := system_state(host, name, wait=True)).startswith("unknown") and time.monotonic() < deadline:
            time.sleep(1)
        if state not in ("running", "degraded"):
            failed = attach(host, name, "systemctl", "--failed", "--no-legend")
            log = (host.storage / f"lxc-start-{name}.log").read_text(errors="replace").splitlines()
            raise TestbedError(f"systemd in {name} did not finish booting: {state}; lxc-info: "
                               f"{lxc_state(host, name)}; failed units: {failed}; "
                               f"lxc-start's log ends: {' | '.join(log[-5:])}")
    except BaseException:
        destroy(host, name)
        raise
    return addr


def attach(host: Host, name: str, *argv: str, timeout: float = 60) -> str:
    """The output of ``argv`` run inside container ``name`` (lxc-attach; not checked)."""
    return host_command(host, ["lxc-attach", "-P", str(host.lxcpath), "-n", name, "--", *argv], check=False,
                        timeout=timeout).stdout.strip()


def system_state(host: Host, name: str, *, wait: bool = False) -> str:
    """What ``systemctl is-system-running`` says inside the container (``--wait``: once booted)."""
    argv = ["lxc-attach", "-P", str(host.lxcpath), "-n", name, "--", "systemctl", "is-system-running",
            *(["--wait"] if wait else [])]
    result = host_command(host, argv, check=False, timeout=180)
    return result.stdout.strip() or f"unknown ({result.stderr.strip()[-300:] or f'exit {result.returncode}'})"


def _start(host: Host, name: str) -> None:
    log = host.storage / f"lxc-start-{name}.log"
    try:
        host_command(host, ["lxc-start", "-P", str(host.lxcpath), "-n", name, "-o", str(log), "-l", "INFO"],
                     output_file=host.storage / f"lxc-start-{name}.out")
    except CommandError as e:
        errors = [line for line in log.read_text(errors="replace").splitlines() if " ERROR " in line]
        raise TestbedError(f"{e}; lxc-start's log says: {' | '.join(errors[:6])}") from None


def lxc_state(host: Host, name: str) -> str:
    result = host_command(host, ["lxc-info", "-P", str(host.lxcpath), "-n", name, "-s", "-H"], check=False)
    return result.stdout.strip() if result.returncode == 0 else "ABSENT"


def destroy(host: Host, name: str) -> None:
    cdir = host.lxcpath / name
    if not cdir.exists():
        return
    if lxc_state(host, name) not in ("STOPPED", "ABSENT"):
        host_command(host, ["lxc-stop", "-P", str(host.lxcpath), "-n", name, "-k"], check=False)
        # Never remove the config of a container still running: its processes would live on, unseen,
        # with an address the test bed would hand out again.
        if (state := lxc_state(host, name)) not in ("STOPPED", "ABSENT"):
            raise TestbedError(f"container {name} on host {host.name} is still {state} after lxc-stop -k")
    shutil.rmtree(cdir)


@contextlib.contextmanager
def removed_after(name: str, *hosts: Host) -> Iterator[str]:
    """Yields ``name``; then container ``name`` is gone from each host, whatever happened (it may
    have moved, or never been made)."""
    try:
        yield name
    finally:
        for host in hosts:
            destroy(host, name)


def list_containers(host: Host) -> list[str]:
    if not host.lxcpath.is_dir():
        return []
    return sorted(p.parent.name for p in host.lxcpath.glob("*/config"))


# --- the workload's own report ---------------------------------------------------


def _rootfs(host: Host, name: str) -> Path:
    """The root filesystem of an LXC container, or of an LXD or Incus instance (see testbed.lxd), on ``host``."""
    if (host.lxcpath / name / "config").exists():
        return host.lxcpath / name / "rootfs"
    for daemon in ("lxd", "incus"):
        rootfs = host.root / daemon / "containers" / name / "rootfs"
        if rootfs.exists():
            return rootfs
    raise TestbedError(f"no container {name} on host {host.name}")


def read_workload(host: Host, name: str) -> dict[str, object]:
    """The workload's latest state line, plus where and how fresh it is."""
    path = _rootfs(host, name) / STATE_IN_CONTAINER.lstrip("/")
    last_error = ""
    for _ in range(20):
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise TestbedError(f"container {name} on host {host.name} has no workload state ({path})") from None
        except json.JSONDecodeError as e:
            last_error = str(e)  # read while it was being rewritten: try again
            time.sleep(0.005)
            continue
        if not isinstance(data, dict):
            raise TestbedError(f"workload state of {name} is not a JSON object")
        data["host"] = host.name
        data["name"] = name
        data["age_ms"] = round((time.time_ns() - int(data["time_ns"])) / 1e6, 3)
        return data
    raise TestbedError(f"workload state of {name} unreadable: {last_error}")


def _counter(state: dict[str, object], key: str = "counter") -> int:
    return int(str(state[key]))


def poll_workload(host: Host, name: str, done: Callable[[dict[str, object]], bool], what: str,
                  timeout: float = 30.0) -> dict[str, object]:
    """Read the workload's state until ``done(state)``; TestbedError after ``timeout``.

    A state file that does not exist yet (the workload is starting) counts
    as not done.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            state = read_workload(host, name)
            if done(state):
                return state
        except TestbedError:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise TestbedError(f"workload in {name} on host {host.name} {what} within {timeout:g} s")
        time.sleep(0.05)


def wait_for_workload(host: Host, name: str, timeout: float = 30.0) -> dict[str, object]:
    return poll_workload(host, name, lambda s: _counter(s) > 0, "did not start", timeout)


# --- checkpoint and restore in place (the ground-is-real smoke) ------------------


@dataclass(frozen=True)
class LocalCheckpoint:
    dump_s: float
    restore_s: float
    before: dict[str, object]
    after: dict[str, object]


def checkpoint_restore_in_place(host: Host, name: str) -> LocalCheckpoint:
    """Checkpoint ``name`` with CRIU (stopping it), then restore it on the same host.

    Uses ``lxc-checkpoint`` (liblxc drives CRIU). The images go to the host's
    storage root and are removed afterwards.
    """
    images = host.storage / f"checkpoint-{name}"
    shutil.rmtree(images, ignore_errors=True)
    lxcargs = ["-P", str(host.lxcpath), "-n", name, "-D", str(images)]
    out = host.storage / f"checkpoint-{name}.out"
    before = read_workload(host, name)
    t0 = time.monotonic()
    host_command(host, ["lxc-checkpoint", *lxcargs, "-s"], output_file=out)
    t1 = time.monotonic()
    if lxc_state(host, name) != "STOPPED":
        raise TestbedError(f"{name} still runs after its checkpoint")
    # The restored container's monitor keeps inherited fds: output to a file.
    host_command(host, ["lxc-checkpoint", *lxcargs, "-r"], output_file=out)
    t2 = time.monotonic()
    try:
        after = _wait_for_progress(host, name, _counter(before))
    finally:
        shutil.rmtree(images, ignore_errors=True)
    return LocalCheckpoint(t1 - t0, t2 - t1, before, after)


def wait_for_full_verification(host: Host, name: str, timeout: float = 30.0) -> dict[str, object]:
    """Wait until the workload has checked its whole buffer since this call.

    Two more completed passes guarantee one pass that started after the call.
    """
    start = _counter(read_workload(host, name), "verified_passes")
    return poll_workload(host, name, lambda s: _counter(s, "verified_passes") >= start + 2,
                         "did not verify its memory", timeout)


def _wait_for_progress(host: Host, name: str, counter: int, timeout: float = 10.0) -> dict[str, object]:
    return poll_workload(host, name, lambda s: _counter(s) > counter and float(str(s["age_ms"])) < 1000,
                         "made no progress after restore", timeout)
