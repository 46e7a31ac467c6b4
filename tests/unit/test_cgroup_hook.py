"""The cgroup hook's executable: Python starts only at the action it acts on."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from lxdmig.backends import cgroup_hook


def _run(hook: Path, action: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(hook)], env={**os.environ, "CRTOOLS_SCRIPT_ACTION": action}, capture_output=True,
                          text=True, timeout=30, check=False)


def test_hook_ignores_other_actions_and_runs_main_at_setup_namespaces(tmp_path: Path) -> None:
    plan = tmp_path / "it's a plan.json"  # (quoting)
    plan.write_text(json.dumps({"root": "x", "root_mode": 0o755, "dirs": [["a", 0, 0]]}))
    hook = tmp_path / "hook"
    hook.write_text(cgroup_hook.script_text(plan))
    hook.chmod(0o700)
    assert hook.read_text().startswith("#!/bin/sh\n")
    for action in ("pre-restore", "post-restore", "pre-resume", "network-unlock"):
        done = _run(hook, action)
        assert (done.returncode, done.stderr) == (0, "")
    plan.write_text("not json")  # main() runs at its action and reports the broken plan
    done = _run(hook, cgroup_hook.ACTION)
    assert done.returncode == 1
    assert "lxdmig cgroup hook:" in done.stderr


def test_hook_imports_nothing_from_the_directory_it_runs_in(tmp_path: Path) -> None:
    """CRIU runs the hook in the images directory, which holds what the peer uploaded: a json.py there
    must not be what the hook (root) imports."""
    images = tmp_path / "images"
    images.mkdir()
    planted = tmp_path / "planted-ran"
    for module in ("json", "lxdmig", "os", "pathlib"):
        (images / f"{module}.py").write_text(f"open({str(planted)!r}, 'a').write({module!r})\n")
    plan = images / "plan.json"
    plan.write_text(json.dumps({"root": "x", "root_mode": 0o755, "dirs": []}))
    hook = images / "hook"
    hook.write_text(cgroup_hook.script_text(plan))
    hook.chmod(0o700)
    done = subprocess.run([str(hook)], env={**os.environ, "CRTOOLS_SCRIPT_ACTION": cgroup_hook.ACTION},
                          cwd=images, capture_output=True, text=True, timeout=30, check=False)
    assert not planted.exists(), f"the hook imported {planted.read_text()} from its working directory"
    assert "lxdmig cgroup hook:" in done.stderr or done.returncode == 0, done.stderr
