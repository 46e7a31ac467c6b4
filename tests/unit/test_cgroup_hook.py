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
