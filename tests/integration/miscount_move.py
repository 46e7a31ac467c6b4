"""Run as a test host: move CONTAINER to REMOTE (stop-copy) with lxdmig's mover, but tell the destination
one process more than was dumped: what the destination sees when a dump or restore lost a task. The
destination counts the restored processes itself. Prints one JSON line.

usage: python miscount_move.py REMOTE CONTAINER
"""

from __future__ import annotations

import json
import sys

from lxdmig import config
from lxdmig.backends.lxc import LxcBackend
from lxdmig.errors import LxdmigError
from lxdmig.migrate.move import Mover
from lxdmig.migrate.report import MoveRequest


class Miscounting(LxcBackend):
    def task_count(self, container: str) -> int:
        return super().task_count(container) + 1


def main(remote: str, name: str) -> None:
    conf = config.load()
    try:
        report = Mover(conf, MoveRequest(name, remote, "stop-copy"), backend=Miscounting(conf.lxcpath)).run()
        print(json.dumps({"moved": True, "tasks": report.tasks}))
    except LxdmigError as e:
        print(json.dumps({"moved": False, "error": str(e)}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
