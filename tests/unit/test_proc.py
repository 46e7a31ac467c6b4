"""proc.run with real tiny programs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lxdmig import proc


def test_success_returns_output() -> None:
    result = proc.run(["sh", "-c", "echo out; echo err >&2"], timeout=10)
    assert result.returncode == 0
    assert result.stdout == "out\n"
    assert result.stderr == "err\n"


def test_failure_carries_command_status_and_stderr_tail() -> None:
    with pytest.raises(proc.CommandFailed) as info:
        proc.run(["sh", "-c", "echo one >&2; echo two >&2; exit 3"], timeout=10)
    e = info.value
    assert e.returncode == 3
    assert e.output_tail == "one\ntwo"
    assert "exited with status 3" in str(e) and "sh -c" in str(e) and "two" in str(e)


def test_check_false_returns_status() -> None:
    assert proc.run(["sh", "-c", "exit 5"], timeout=10, check=False).returncode == 5


def test_missing_program() -> None:
    with pytest.raises(proc.CommandNotFound, match="no-such-program-lxdmig"):
        proc.run(["no-such-program-lxdmig"], timeout=10)


def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild"
    start = time.monotonic()
    with pytest.raises(proc.CommandTimeout, match="did not finish within 0.5 s"):
        proc.run(["sh", "-c", f"sleep 30 & echo $! > {pidfile}; wait"], timeout=0.5)
    assert time.monotonic() - start < 10
    grandchild = int(pidfile.read_text())
    for _ in range(50):
        if not os.path.exists(f"/proc/{grandchild}") or _is_zombie(grandchild):
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"grandchild {grandchild} survived the timeout")


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except FileNotFoundError:
        return True


def test_stdin_is_devnull() -> None:
    assert proc.run(["cat"], timeout=10).stdout == ""


def test_input_text() -> None:
    assert proc.run(["cat"], timeout=10, input_text="hello").stdout == "hello"


def test_env_is_scrubbed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/x")
    monkeypatch.setenv("MY_API_TOKEN", "secret")
    monkeypatch.setenv("KEEP_ME", "yes")
    out = proc.run(["env"], timeout=10, env={"EXTRA": "1"}).stdout
    assert "NOTIFY_SOCKET" not in out
    assert "MY_API_TOKEN" not in out
    assert "KEEP_ME=yes" in out and "EXTRA=1" in out
    assert "/usr/local/sbin" in out


def test_output_file_collects_both_streams_and_tail_on_failure(tmp_path: Path) -> None:
    log = tmp_path / "out.log"
    log.write_text("earlier run\n")
    with pytest.raises(proc.CommandFailed) as info:
        proc.run(["sh", "-c", "echo to-out; echo to-err >&2; exit 1"], timeout=10, output_file=log)
    assert "earlier run" not in info.value.output_tail
    assert "to-out" in info.value.output_tail and "to-err" in info.value.output_tail
    assert log.read_text().startswith("earlier run\n")


def test_output_file_does_not_wait_for_daemonized_children(tmp_path: Path) -> None:
    # A child that leaves a process behind holding stdout (as lxc-checkpoint -r
    # leaves the container monitor) must not block run().
    start = time.monotonic()
    proc.run(["sh", "-c", "setsid sleep 3 & exit 0"], timeout=10, output_file=tmp_path / "o")
    assert time.monotonic() - start < 2.5


def test_empty_argv_is_a_bug() -> None:
    with pytest.raises(ValueError):
        proc.run([], timeout=1)


def test_criu_config_file_text() -> None:
    from pathlib import Path

    from lxdmig import criu

    argv = ["--page-server", "--port", "27100", *criu.tls_options(Path("/c"), Path("/k"), Path("/p"))]
    assert criu.config_file_text(argv).splitlines() == [
        "page-server", "port 27100", "tls", "tls-cert /c", "tls-key /k", "tls-cacert /p", "tls-no-cn-verify"]
    for bad in (["port"], ["--x", "a b"]):
        with pytest.raises(ValueError):
            criu.config_file_text(bad)


def test_child_logs_and_stops(tmp_path: Path) -> None:
    log = tmp_path / "child.log"
    with proc.Child(["sh", "-c", "echo started; exec sleep 60"], log_file=log) as child:
        deadline = time.monotonic() + 5
        while "started" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert child.poll() is None and child.log_tail() == "started"
    assert child.poll() is not None


def test_child_dies_with_its_parent(tmp_path: Path) -> None:
    # A parent that starts a Child and is then SIGKILLed must not leave it behind.
    pidfile = tmp_path / "pid"
    parent = subprocess.Popen([sys.executable, "-c", f"""
import time
from pathlib import Path
from lxdmig import proc
c = proc.Child(["sleep", "60"], log_file=Path({str(tmp_path / 'log')!r}))
Path({str(pidfile)!r}).write_text(str(c.pid))
time.sleep(60)
"""])
    deadline = time.monotonic() + 10
    while not pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    child_pid = int(pidfile.read_text())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 5
    while Path(f"/proc/{child_pid}").exists() and time.monotonic() < deadline:
        _reap_if_ours(child_pid)
        time.sleep(0.02)
    assert not Path(f"/proc/{child_pid}").exists() or "Z" in Path(f"/proc/{child_pid}/stat").read_text().split()[2]


def _reap_if_ours(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def test_lxdmig_children_import_nothing_from_the_working_directory(tmp_path: Path) -> None:
    """The guard, the rsync tunnel and the others are `python -m` children of commands root runs from
    wherever the operator stands: a planted argparse.py there must not run."""
    planted = tmp_path / "planted-ran"
    for module in ("argparse", "json", "lxdmig"):
        (tmp_path / f"{module}.py").write_text(f"open({str(planted)!r}, 'a').write({module!r})\n")
    done = subprocess.run(proc.python_module("lxdmig", "--version"), cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, check=False)
    assert not planted.exists(), f"a child imported {planted.read_text()} from its working directory"
    assert done.returncode == 0 and done.stdout.startswith("lxdmig "), done.stderr
