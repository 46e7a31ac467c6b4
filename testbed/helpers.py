"""The test bed's lxdmig-helper daemons: config, start (waiting for READY=1), stop, mutual trust.

Each host gets ``lxdmig.conf`` in its config dir (listen on its uplink
address, its own LXC path and work dir). The helper runs in the host's
namespaces and cgroups, started the way systemd would start it: with a
NOTIFY_SOCKET on which the test bed waits for READY=1. Remotes are then
added both ways with one-time trust tokens, exactly as an operator would.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from lxdmig import config, failpoints, proc
from testbed import hosts
from testbed.containers import host_command
from testbed.layout import Host, all_hosts, run_dir

READY_TIMEOUT = 60.0


PRIVILEGED_ENV = "LXDMIG_TESTBED_ALLOW_PRIVILEGED"


def config_text(host: Host, *, hardened: bool = True, plain_pages: bool = True,
                allow_privileged: bool | None = None, lxd_allow_keys: str = "") -> str:
    """The test bed's helper config: hardened mode's defaults, but plain pages allowed, and privileged
    containers too where ``allow_privileged`` (None: where $LXDMIG_TESTBED_ALLOW_PRIVILEGED is 1, as in
    the VM's suites, whose containers are privileged)."""
    if allow_privileged is None:
        allow_privileged = os.environ.get(PRIVILEGED_ENV) == "1"
    return (f"# lxdmig test bed, host {host.name}\n"
            f"[helper]\nlisten = {host.address}\nport = {config.DEFAULT_PORT}\n"
            f"hardened = {str(hardened).lower()}\nplain_pages = {str(plain_pages).lower()}\n"
            f"allow_privileged = {str(allow_privileged).lower()}\nlxd_allow_keys = {lxd_allow_keys}\n"
            # A developer chasing a failed restore sets this to keep its images and CRIU logs.
            f"keep_failed = {os.environ.get('LXDMIG_TESTBED_KEEP_FAILED', 'false')}\n"
            f"work_dir = {host.storage / 'migrations'}\n"
            f"[client]\nwork_dir = {host.storage / 'outgoing'}\n"
            f"[lxc]\nlxcpath = {host.lxcpath}\n"
            f"[lxd]\nsocket = {host.root / 'lxd' / 'unix.socket'}\n"
            f"[incus]\nsocket = {host.root / 'incus' / 'unix.socket'}\n")


def pid_file(host: Host) -> Path:
    return run_dir() / f"helper-{host.name}.pid"


def log_file(host: Host) -> Path:
    return run_dir() / f"helper-{host.name}.log"


def running_pid(host: Host) -> int | None:
    try:
        pid = int(pid_file(host).read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"lxdmig.helper" in cmdline else None


def helper_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "lxdmig.helper", *args]


def lxdmig_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "lxdmig", *args]


def run_lxdmig(host: Host, *args: str, timeout: float = 600) -> proc.Completed:
    """``lxdmig ARGS`` as ``host``, as an operator there would run it (not checked: callers look)."""
    return host_command(host, lxdmig_argv(*args), check=False, timeout=timeout)


def start(host: Host, extra_env: dict[str, str] | None = None, *, hardened: bool = True,
          plain_pages: bool = True, allow_privileged: bool | None = None, lxd_allow_keys: str = "") -> int:
    """Start host's helper unless it runs; wait for its READY=1. Returns its pid."""
    pid = running_pid(host)
    if pid is not None:
        return pid
    host.config_dir.mkdir(parents=True, exist_ok=True)
    (host.config_dir / config.FILE_NAME).write_text(config_text(host, hardened=hardened, plain_pages=plain_pages,
                                                                allow_privileged=allow_privileged,
                                                                lxd_allow_keys=lxd_allow_keys))
    notify_path = run_dir() / f"notify-{host.name}.sock"
    notify_path.unlink(missing_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        env = proc.clean_env({**host.env(), "NOTIFY_SOCKET": str(notify_path), **(extra_env or {})})
        with open(log_file(host), "ab") as log:
            child = subprocess.Popen(hosts.enter_argv(host, helper_argv("serve")), stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=log, env=env, start_new_session=True)
        hosts.join_host_cgroups(host, child.pid)  # nsenter execs in place: the helper keeps this pid
        pid_file(host).write_text(str(child.pid))
        try:
            wait_ready(notify, child, READY_TIMEOUT)
        except BaseException:
            stop(host)
            raise
        finally:
            notify_path.unlink(missing_ok=True)
    return child.pid


def hardened(host: Host) -> bool:
    """Whether host's helper was (last) started in hardened mode."""
    try:
        return "hardened = false" not in (host.config_dir / config.FILE_NAME).read_text()
    except OSError:
        return True


def fail_points(host: Host) -> str:
    """The fail points host's running helper acts at (lxdmig/failpoints.py), from its environment."""
    pid = running_pid(host)
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if pid else []
    except OSError:
        return ""
    prefix = failpoints.ENV.encode() + b"="
    return next((item[len(prefix):].decode() for item in environ if item.startswith(prefix)), "")


def restart(host: Host, *, hardened: bool = True, plain_pages: bool = True, allow_privileged: bool | None = None,
            extra_env: dict[str, str] | None = None, lxd_allow_keys: str = "") -> int:
    stop(host)
    return start(host, extra_env, hardened=hardened, plain_pages=plain_pages, allow_privileged=allow_privileged,
                 lxd_allow_keys=lxd_allow_keys)


@contextlib.contextmanager
def _restarted(host: Host, *, hardened: bool = True, plain_pages: bool = True,
               allow_privileged: bool | None = None, lxd_allow_keys: str = "") -> Iterator[None]:
    """host's helper restarted with these settings for the block, and with the test bed's after it."""
    restart(host, hardened=hardened, plain_pages=plain_pages, allow_privileged=allow_privileged,
            lxd_allow_keys=lxd_allow_keys)
    try:
        yield
    finally:
        restart(host)


@contextlib.contextmanager
def allowing_privileged(*hosts: Host, lxd_allow_keys: str = "") -> Iterator[None]:
    """The hosts' helpers in hardened mode, receiving privileged containers (allow_privileged = true) as an
    operator may let them (and ``lxd_allow_keys``). The test bed's default settings after."""
    with contextlib.ExitStack() as stack:
        for host in hosts:
            stack.enter_context(_restarted(host, allow_privileged=True, lxd_allow_keys=lxd_allow_keys))
        yield


def unhardened(host: Host) -> contextlib.AbstractContextManager[None]:
    """host's helper without hardened mode, as an operator may run it: for tests of what happens
    after what hardened mode refuses (a hook that fails a restore on purpose). Hardened again after."""
    return _restarted(host, hardened=False)


def tls_pages_only(host: Host) -> contextlib.AbstractContextManager[None]:
    """host's helper with [helper] plain_pages = false, lxdmig's default (the test bed's helpers take
    plain pages, for the tests of --page-transport plain). As before after."""
    return _restarted(host, plain_pages=False)


def wait_ready(notify: socket.socket, child: subprocess.Popen[bytes], timeout: float) -> list[str]:
    """Datagrams until one says READY=1; the helper exiting first is an error."""
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise hosts.TestbedError(f"lxdmig-helper exited with status {child.returncode} before READY=1")
        notify.settimeout(0.2)
        try:
            message = notify.recv(4096).decode()
        except TimeoutError:
            continue
        seen.append(message)
        if "READY=1" in message.splitlines():
            return seen
    raise hosts.TestbedError(f"lxdmig-helper sent no READY=1 within {timeout:g} s (got {seen})")


def stop(host: Host, timeout: float = 30.0) -> None:
    pid = running_pid(host)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while running_pid(host) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        if running_pid(host) is not None:
            os.kill(pid, signal.SIGKILL)
    pid_file(host).unlink(missing_ok=True)


def remotes_of(host: Host) -> dict[str, object]:
    try:
        data = json.loads((host.config_dir / "remotes.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def pair(source: Host, destination: Host) -> None:
    """Make ``destination`` a remote of ``source`` (trusted both ways) unless it is already."""
    if destination.name in remotes_of(source):
        return
    token = host_command(destination, helper_argv("trust", "add", source.name, "--address",
                                                  f"{destination.address}:{config.DEFAULT_PORT}")).stdout.strip()
    host_command(source, lxdmig_argv("remote", "add", destination.name, "-"), input_text=token + "\n")


def up() -> None:
    for h in all_hosts():
        start(h)
    for source in all_hosts():
        for destination in source.others():
            pair(source, destination)


def down() -> None:
    for h in all_hosts():
        stop(h)
