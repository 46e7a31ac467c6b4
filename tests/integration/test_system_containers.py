"""Real system containers: Debian 12 and 13 with systemd as init and services from their packages,
with their stock units, unprivileged, moved live while a real client of one of them stays connected.

The container is built from the cached debian-12, then the debian-13 image (testbed.images). One
test per image tells the whole story on one container, step by step as an operator meets it: the
preflight names each obstacle of the stock container before anything is frozen, ``lxdmig prepare
--dry-run`` changes nothing, ``lxdmig prepare`` makes it movable, then a Redis client in host b's
network namespace sends INCR every 10 ms over one connection while the container moves
a -> b -> a (Debian 13's memory over --page-transport plain); every reply must be the previous plus
one (no reconnect, no lost or doubled write), and on each destination systemd must be running,
journald writing and every service up (one with a credential, which lxdmig carries: CRIU does
not); last, ``lxdmig prepare --undo`` takes the change back.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lxdmig import prepare, proc
from lxdmig.errors import ExitCode
from testbed import containers, helpers
from testbed.containers import host_argv, host_command
from testbed.layout import Host

A, B = Host("a"), Host("b")
POSTGRESQL = {"debian-12": 15, "debian-13": 17}  # the release's PostgreSQL major version
# How the memory pages travel, one way per image (no time for both in make test): over the plain
# connection, PostgreSQL's System V shared memory goes to the page server too (over TLS it cannot).
TRANSPORT = {"debian-12": "tls", "debian-13": "plain"}
NAME = f"sys{os.getpid() % 10000}"
SERVICES: tuple[str, ...] = ()
IMAGE = ""


@pytest.fixture(scope="module", params=sorted(POSTGRESQL))
def system(testbed: None, request: pytest.FixtureRequest) -> Iterator[str]:
    global SERVICES, IMAGE
    IMAGE = request.param
    SERVICES = ("redis-server.service", f"postgresql@{POSTGRESQL[request.param]}-main.service", "nginx.service",
                "ssh.service", "systemd-journald.service", "systemd-logind.service", "dbus.service")
    with containers.removed_after(NAME, A, B):
        containers.create_system(A, NAME, request.param)
        yield NAME


lxdmig = helpers.run_lxdmig


def inside(host: Host, *argv: str) -> str:
    return containers.attach(host, NAME, *argv)


def credential_mount_options(host: Host) -> str:
    """The per-mount options of the test's credential ramfs (systemd: ro, nosuid, nodev, noexec, and
    nosymfollow, which CRIU does not restore: lxdmig.ramfs sets it again)."""
    return inside(host, "awk", '$5 == "/run/credentials/lxdmig-cred.service" { print $6 }', "/proc/1/mountinfo")


def dropin(host: Host) -> Path:
    return host.lxcpath / NAME / "rootfs" / prepare.DROPIN


def check_names_each_obstacle_of_the_stock_container(system: str) -> None:
    result = lxdmig(A, "check", "b", system)
    assert result.returncode == ExitCode.PREFLIGHT, result.stdout + result.stderr
    fails = [line for line in result.stdout.splitlines() if line.startswith("fail")]
    text = "\n".join(fails)
    # redis-server's stock unit has PrivateUsers=, ProtectHostname= and mount sandboxing.
    for kind in ("user", "uts", "mnt"):
        assert f"redis-server.service) runs in a {kind} namespace of its own" in text, text
    assert "lxdmig prepare" in text
    assert "/run/credentials/" in result.stdout  # systemd's ramfs credential mounts are named (empty: warn)
    assert inside(A, "systemctl", "is-active", "redis-server") == "active"  # nothing was frozen or stopped


def prepare_dry_run_changes_nothing(system: str) -> None:
    result = lxdmig(A, "prepare", system, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert f"would write /{prepare.DROPIN}" in result.stdout
    assert "would systemctl restart redis-server.service" in result.stdout
    assert not dropin(A).exists()


def prepare_makes_it_movable(system: str) -> None:
    result = lxdmig(A, "prepare", system)
    assert result.returncode == 0, result.stderr
    assert dropin(A).stat().st_uid == containers.ID_SHIFT  # the container's root owns it
    check = lxdmig(A, "check", "b", system)
    assert check.returncode == 0, check.stdout
    again = lxdmig(A, "prepare", system)
    assert again.stdout.strip() == f"{system}: nothing to change"


def busy_tasks(host: Host, comms: tuple[str, ...], seconds: float = 1.0) -> list[str]:
    """The container's processes of these names that ran more than half of ``seconds``."""
    init = int(host_command(host, ["lxc-info", "-P", str(host.lxcpath), "-n", NAME, "-p", "-H"]).stdout)
    pids = [init, *proc.descendants(init)]

    def cpu_ticks() -> dict[int, tuple[str, int]]:
        ticks = {}
        for pid in pids:
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            comm, fields = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
            ticks[pid] = (comm, int(fields[11]) + int(fields[12]))  # utime + stime
        return ticks

    before = cpu_ticks()
    time.sleep(seconds)
    after = cpu_ticks()
    hz = os.sysconf("SC_CLK_TCK")
    return [f"{comm} ({pid})" for pid, (comm, ticks) in after.items()
            if comm in comms and pid in before and (ticks - before[pid][1]) / hz > seconds / 2]


def assert_system_healthy(host: Host) -> None:
    # systemd finished no job with a failure, every service runs, and journald still writes.
    assert inside(host, "systemctl", "is-system-running") == "running", inside(host, "systemctl", "--failed")
    assert inside(host, "systemctl", "is-active", *SERVICES).split() == ["active"] * len(SERVICES)
    # systemd still runs jobs and makes cgroups: a transient service starts and finishes.
    assert host_command(host, ["lxc-attach", "-P", str(host.lxcpath), "-n", NAME, "--", "systemd-run", "--wait",
                               "--quiet", "true"], check=False, timeout=60).returncode == 0
    # No systemd process spins (a pressure trigger CRIU left behind makes them poll in a busy loop).
    spinning = busy_tasks(host, ("systemd", "systemd-journal", "systemd-logind"))
    assert not spinning, f"busy after the move on {host.name}: {spinning}"
    mark = f"lxdmig-mark-{time.monotonic_ns()}"
    inside(host, "logger", mark)
    deadline = time.monotonic() + 10
    while mark not in inside(host, "journalctl", "-o", "cat", "-n", "50", "--no-pager"):
        assert time.monotonic() < deadline, f"journald on {host.name} did not log {mark}"
        time.sleep(0.2)


class Clients:
    """The real clients, each from host b's network namespace, connected before the moves and checked
    after them: Redis INCR every 10 ms on one connection, a PostgreSQL transaction left open across the
    moves, pgbench running through them, a slow download of a 200 MB file from nginx, an SSH session."""

    def __init__(self, rootfs: Path, address: str, tmp: Path) -> None:
        self.address, self.tmp = address, tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        # The file nginx serves, and root's SSH key, written as the container's root.
        big = rootfs / "var/www/html/big.bin"
        with open(big, "wb") as fh:
            for _ in range(200):
                fh.write(os.urandom(1 << 20))
        os.chown(big, containers.ID_SHIFT, containers.ID_SHIFT)
        self.big_sha = hashlib.sha256(big.read_bytes()).hexdigest()
        host_command(B, ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / "key")])
        ssh_dir = rootfs / "root/.ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        (ssh_dir / "authorized_keys").write_text((tmp / "key.pub").read_text())
        for path in (ssh_dir, ssh_dir / "authorized_keys"):
            os.chown(path, containers.ID_SHIFT, containers.ID_SHIFT)

    def _start(self, *argv: str, stdin: bool = False, out: str) -> subprocess.Popen[bytes]:
        with open(self.tmp / out, "wb") as fh:
            child = subprocess.Popen(host_argv(B, *argv), stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                     stdout=fh, stderr=subprocess.STDOUT)
        self.procs.append(child)
        return child

    def _wait_for(self, out: str, text: str, seconds: float = 30) -> None:
        deadline = time.monotonic() + seconds
        while text not in (self.tmp / out).read_text(errors="replace"):
            assert time.monotonic() < deadline, f"{out}: no {text!r} within {seconds} s: " \
                                                f"{(self.tmp / out).read_text(errors='replace')[-500:]}"
            time.sleep(0.1)

    def start(self, seconds: int) -> None:
        # A timer armed before the moves must fire after them (systemd's timerfds are carried).
        inside(A, "systemd-run", "--quiet", "--unit=lxdmig-timer", f"--on-active={seconds // 2}",
               "--timer-property=AccuracySec=1s", "touch", "/run/lxdmig-timer-fired")  # (default: within 1 min)
        # A service with a credential (systemd keeps it in a ramfs, which CRIU does not carry) must still
        # read it after the moves.
        self.secret = secrets.token_hex(16)
        inside(A, "systemd-run", "--quiet", "--unit=lxdmig-cred", f"--property=SetCredential=token:{self.secret}",
               "sh", "-c", 'while :; do cat "$CREDENTIALS_DIRECTORY/token" > /run/cred.tmp; mv /run/cred.tmp '
                           '/run/lxdmig-cred-seen; sleep 0.5; done')
        deadline = time.monotonic() + 30  # (the service's own process mounts it, after systemd-run returns)
        while not (cred_options := credential_mount_options(A)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "ro" in cred_options.split(","), f"no read-only credential mount: {cred_options!r}"
        self.cred_options = cred_options
        pg = ["-h", self.address, "-U", "postgres"]
        host_command(B, ["pgbench", "-i", "-s", "1", "-q", *pg, "postgres"], timeout=120)
        self.redis = self._start(sys.executable, "-m", "testbed.clients", "redis", self.address,
                                 "--until", str(self.tmp / "stop"), "--out", str(self.tmp / "redis.json"),
                                 out="redis.out")
        self.psql = self._start("psql", *pg, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "postgres", stdin=True,
                                out="psql.out")
        self._send(self.psql, "CREATE TABLE IF NOT EXISTS moved (n int);\nBEGIN;\n"
                              "INSERT INTO moved VALUES (1);\nSELECT 'open-' || txid_current();\n")
        self._wait_for("psql.out", "open-")
        self.pgbench = self._start("pgbench", "-c", "2", "-j", "1", "-T", str(seconds), *pg, "postgres",
                                   out="pgbench.out")
        self.curl = self._start("curl", "-sS", "--limit-rate", f"{200 // seconds + 1}M", "-o",
                                str(self.tmp / "big.bin"), f"http://{self.address}/big.bin", out="curl.out")
        self.ssh = self._start("ssh", "-tt", "-i", str(self.tmp / "key"), "-o", "StrictHostKeyChecking=no",
                               "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
                               f"root@{self.address}", stdin=True, out="ssh.out")
        self._send(self.ssh, "echo session-$((6*7))-open\n")
        self._wait_for("ssh.out", "session-42-open")
        time.sleep(1)

    @staticmethod
    def _send(child: subprocess.Popen[bytes], text: str) -> None:
        assert child.stdin is not None
        child.stdin.write(text.encode())
        child.stdin.flush()

    def finish_and_check(self) -> list[str]:
        """Ends each client the way a user would; returns what went wrong (empty: all kept working)."""
        wrong = []
        self._send(self.ssh, "echo after-$((6*7))-move; exit\n")
        self._send(self.psql, "INSERT INTO moved VALUES (2);\nCOMMIT;\nSELECT 'rows-' || count(*) FROM moved;\n")
        assert self.psql.stdin is not None and self.ssh.stdin is not None
        self.psql.stdin.close()
        for name, child in (("ssh", self.ssh), ("psql", self.psql), ("curl", self.curl),
                            ("pgbench", self.pgbench)):
            try:
                code = child.wait(timeout=240)
            except subprocess.TimeoutExpired:
                child.kill()
                code = -9
            said = (self.tmp / f"{name}.out").read_text(errors="replace")
            if code != 0:
                wrong.append(f"{name} exited {code}: {said[-400:]}")
        (self.tmp / "stop").touch()
        self.redis.wait(timeout=60)
        if "after-42-move" not in (self.tmp / "ssh.out").read_text(errors="replace"):
            wrong.append("the SSH session did not run a command after the moves")
        if "rows-2" not in (self.tmp / "psql.out").read_text(errors="replace"):
            wrong.append("the transaction left open across the moves did not commit both rows")
        bench = (self.tmp / "pgbench.out").read_text(errors="replace")
        if "number of failed transactions: 0 " not in bench:
            wrong.append(f"pgbench: {bench[-400:]}")
        inside(A, "rm", "/run/lxdmig-cred-seen")
        time.sleep(1.5)
        if inside(A, "cat", "/run/lxdmig-cred-seen") != self.secret:
            wrong.append(f"the credential service reads {inside(A, 'cat', '/run/lxdmig-cred-seen')!r} after the "
                         f"moves ({inside(A, 'systemctl', 'is-active', 'lxdmig-cred')})")
        if (options := credential_mount_options(A)) != self.cred_options:
            wrong.append(f"the credential mount's options were {self.cred_options!r}, now {options!r}")
        if inside(A, "sh", "-c", "test -e /run/lxdmig-timer-fired && echo yes") != "yes":
            wrong.append("the timer armed before the moves did not fire after them")
        got = self.tmp / "big.bin"
        if not got.exists() or hashlib.sha256(got.read_bytes()).hexdigest() != self.big_sha:
            wrong.append("the nginx download does not match the file")
        redis = json.loads((self.tmp / "redis.json").read_text())
        if redis["error"] or redis["out_of_step"] or redis["last"] - redis["first"] != redis["replies"] - 1:
            wrong.append(f"redis: {redis}")
        print(f"redis: {redis['replies']} INCRs on one connection, longest wait {redis['max_wait_ms']} ms; "
              f"pgbench: {[line for line in bench.splitlines() if 'latency average' in line or 'tps' in line]}")
        return wrong

    def kill(self) -> None:
        for child in self.procs:
            if child.poll() is None:
                child.kill()
                child.wait()


def services_keep_their_clients_through_post_copy_and_stop_copy_moves(system: str, tmp_path: Path) -> None:
    clients = Clients(A.lxcpath / system / "rootfs", str(containers.container_address(A, system)), tmp_path)
    reports = []
    try:
        clients.start(seconds=90)
        for source, dest, mode in ((A, B, "post-copy"), (B, A, "stop-copy")):
            moved = lxdmig(source, "move", system, f"{dest.name}:{system}", "--mode", mode, "--json",
                           "--page-transport", TRANSPORT[IMAGE])
            assert moved.returncode == 0, moved.stderr
            reports.append(json.loads(moved.stdout))
            assert_system_healthy(dest)
        wrong = clients.finish_and_check()
    finally:
        clients.kill()
    for report in reports:
        print(f"{report['mode']} ({TRANSPORT[IMAGE]} pages): downtime {report['downtime_ms']} ms, "
              f"restore {report['restore_ms']} ms")
    assert wrong == [], "\n".join(wrong)


def undo_removes_the_dropin(system: str) -> None:
    result = lxdmig(A, "prepare", system, "--undo")
    assert result.returncode == 0, result.stderr
    assert f"remove /{prepare.DROPIN}" in result.stdout and not dropin(A).exists()
    assert inside(A, "systemctl", "is-active", "redis-server") == "active"


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_stock_system_container_is_checked_prepared_moved_and_restored(system: str, tmp_path: Path) -> None:
    check_names_each_obstacle_of_the_stock_container(system)
    prepare_dry_run_changes_nothing(system)
    prepare_makes_it_movable(system)
    services_keep_their_clients_through_post_copy_and_stop_copy_moves(system, tmp_path)
    undo_removes_the_dropin(system)
