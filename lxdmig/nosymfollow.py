"""Run a program (rsync) in a mount namespace of its own in which no symlink under the given
directories is ever followed.

rsync walks a container's files by path as host root: on the source, the running container's
root can swap a directory it is walking for a symlink to a host directory (``renameat2``
exchange), and rsync would read the host's files into the copy; on the destination, a peer can
send a symlink and then files "under" it. Here each directory is bind-mounted onto itself with
``MOUNT_ATTR_NOSYMFOLLOW`` (Linux 5.10): symlinks there are still copied as symlinks (rsync
reads them with readlink), but a path through one fails with ELOOP instead of leaving the tree.
The rest of the host is as it was (the source's rsync tunnel still reads lxdmig's config), and
the mounts vanish with the namespace.

    python3 -I -m lxdmig.nosymfollow DIR [DIR...] -- rsync ...
"""

from __future__ import annotations

import ctypes
import os
import sys

from lxdmig import kernel

_CLONE_NEWNS = 0x00020000
_MS_BIND, _MS_REC, _MS_PRIVATE = 0x1000, 0x4000, 0x40000
_libc = ctypes.CDLL(None, use_errno=True)


def confine(directories: list[str]) -> None:
    """Enter a new mount namespace (this process must be single-threaded) and make every symlink
    under ``directories`` unfollowable in it."""
    kernel.checked(int(_libc.unshare(_CLONE_NEWNS)), "unshare(CLONE_NEWNS)")
    # (Nothing done here may reach the host's namespace.)
    kernel.checked(int(_libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None)), "making / private")
    for directory in directories:
        path = os.fsencode(directory)
        kernel.checked(int(_libc.mount(path, path, None, _MS_BIND | _MS_REC, None)), f"binding {directory}")
        kernel.mount_setattr(-100, directory, kernel.AT_RECURSIVE, kernel.MOUNT_ATTR_NOSYMFOLLOW)  # (AT_FDCWD)


def argv(directories: list[str], program: list[str]) -> list[str]:
    """The command line that runs ``program`` with ``directories`` confined."""
    from lxdmig import proc

    return [*proc.python_module("lxdmig.nosymfollow", *directories), "--", *program]


def main(args: list[str] | None = None) -> int:
    args = sys.argv[1:] if args is None else args
    if "--" not in args or args.index("--") in (0, len(args) - 1):
        print("usage: python3 -m lxdmig.nosymfollow DIR [DIR...] -- PROGRAM [ARG...]", file=sys.stderr)
        return 2
    split = args.index("--")
    try:
        confine(args[:split])
        os.execvp(args[split + 1], args[split + 1:])
    except OSError as e:
        print(f"lxdmig.nosymfollow: {e}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main())
