"""CRIU action script: recreate a container's empty cgroup2 directories while it is being restored.

CRIU restores the cgroup2 directories that hold tasks, not the empty ones
(systemd's slices once their units stopped, e.g. system-modprobe.slice),
but systemd inside keeps inotify watches on their ``cgroup.events``, and
CRIU restores those watches by path: without the directories the restore
fails ("fsnotify: Unable to open .../cgroup.events"). The source lists the
container's cgroup2 subtree (LxcBackend.describe); the destination writes
it to a plan file (the container's cgroup2 path as CRIU restores it, and
the directories below) and has CRIU run this at ``setup-namespaces``,
after the cgroups with tasks were made and before any file is restored.
At ``post-setup-namespaces`` (once CRIU has set the container's cgroup
namespace up, which needs a root without controllers) it enables the
controllers the source's cgroups enabled for their children: systemd also
watches ``memory.events``, which exists only where the parent enables the
memory controller (on a host whose systemd delegates it).

    criu ... --action-script HOOK      (HOOK: a shell script that calls main(PLAN) at that action)
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

from lxdmig import cgroups

ACTION = "setup-namespaces"  # the directories
CONTROLLERS_ACTION = "post-setup-namespaces"  # the controllers: once CRIU has set up the cgroup namespace


def main(plan_file: str) -> int:
    action = os.environ.get("CRTOOLS_SCRIPT_ACTION")
    if action not in (ACTION, CONTROLLERS_ACTION):
        return 0
    try:
        plan = json.loads(Path(plan_file).read_text())
        dirs = [(str(rel), int(uid), int(gid)) for rel, uid, gid in plan["dirs"]]
        mount = cgroups.unified_mount()
        if mount is None:
            print("lxdmig cgroup hook: no cgroup2 hierarchy mounted", file=sys.stderr)
            return 1
        # The container's cgroup as CRIU restores it (its tasks are not in it yet at this stage).
        root = mount / str(plan["root"]).lstrip("/")
        if action == CONTROLLERS_ACTION:
            cgroups.enable_controllers(root, {str(rel): [str(n) for n in names]
                                              for rel, names in dict(plan.get("controllers", {})).items()})
            return 0
        cgroups.make_subtree(root, dirs)
        # liblxc delegates a started container's cgroup2 root (0775, group: its root) but not a
        # restored one's on a hybrid host; CRIU checks the mode of every directory a task holds
        # open (systemd holds this one), and systemd inside must manage its cgroups afterwards.
        if plan.get("delegate_gid") is not None:
            cgroups.delegate_root(root, int(plan["delegate_gid"]))
        else:
            root.chmod(int(plan["root_mode"]) & 0o777)
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"lxdmig cgroup hook: {e}", file=sys.stderr)
        return 1
    return 0


def script_text(plan_file: Path) -> str:
    """The executable CRIU runs (it takes no arguments) at each of its actions.

    A shell script that starts this interpreter only at ``setup-namespaces``:
    CRIU runs its action script a dozen times per restore, and each Python
    start would add ~40 ms to the frozen window.
    """
    # CRIU runs it in the images directory, where the peer's files are: from "/", and with -P, so that
    # Python imports nothing from the directory it runs in (a peer's json.py would run as root).
    code = "import sys; from lxdmig.backends.cgroup_hook import main; sys.exit(main(sys.argv[1]))"
    return (f"#!/bin/sh\ncase \"$CRTOOLS_SCRIPT_ACTION\" in {ACTION}|{CONTROLLERS_ACTION}) ;; *) exit 0;; esac\n"
            "cd / || exit 1\n"
            f"exec {shlex.quote(sys.executable)} -P -c {shlex.quote(code)} {shlex.quote(str(plan_file))}\n")
