"""Files under a directory that someone other than host root can change while lxdmig works in it:
a container's root filesystem (its own root changes it), a container directory LXC gave to the
container's mapped root.

Every path is resolved by the kernel from a descriptor of that directory with ``openat2``'s
``RESOLVE_IN_ROOT``: a symlink, absolute or relative, and ``..`` resolve as they would for the
container, inside the directory, whatever is swapped in during the walk; never to the host's own
files. Files are written to a new name and renamed over the old one (a rename replaces a link,
never follows it), and removed with ``unlinkat`` (which never follows the last component).

    with beneath.Root(rootfs) as root:
        root.write(PurePosixPath("etc/systemd/system/x.conf"), text, owner=(100000, 100000), mode=0o644)
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from types import TracebackType

from lxdmig.kernel import RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS, openat2

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_IN_ROOT = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS


class NotBeneath(OSError):
    """What a path names under the root is not what it must be (a directory, a regular file)."""


def _parent(relative: PurePosixPath) -> PurePosixPath | None:
    if relative.is_absolute() or relative.name in ("", ".", ".."):
        raise ValueError(f"{relative} is not a relative path to a file")
    return relative.parent if relative.parent.parts else None


class Root:
    """A directory opened once without following a link to it; every path below resolves inside it."""

    def __init__(self, path: Path | str, *, follow: bool = False) -> None:
        """``follow``: ``path`` may itself be a link (``/proc/PID/root``: the root a process sees)."""
        self.path = Path(path)
        try:
            self.fd = os.open(path, _DIR if follow else _DIR | os.O_NOFOLLOW)
        except OSError as e:
            raise NotBeneath(e.errno, f"{path} is not a directory (or is a symlink)") from None

    def __enter__(self) -> Root:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        os.close(self.fd)

    def _open(self, relative: PurePosixPath, flags: int) -> int:
        try:
            return openat2(self.fd, str(relative), flags, _IN_ROOT)
        except OSError as e:
            if e.errno == errno.ENOENT:
                raise
            raise NotBeneath(e.errno, f"/{relative} under {self.path}: {e.strerror}") from None

    @contextlib.contextmanager
    def directory(self, relative: PurePosixPath | None, *, make: tuple[int, int] | None = None,
                  mode: int = 0o755) -> Iterator[int]:
        """The fd of directory ``relative`` (None: the root itself); with ``make`` (uid, gid), missing
        components are created with ``mode``, owned by them (each in the directory its parent resolved to)."""
        if relative is None:
            fd = os.dup(self.fd)
        elif make is None:
            fd = self._open(relative, _DIR)
        else:
            fd = os.dup(self.fd)
            for depth in range(1, len(relative.parts) + 1):
                prefix = PurePosixPath(*relative.parts[:depth])
                try:
                    nxt = self._open(prefix, _DIR)
                except FileNotFoundError:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(prefix.name, mode, dir_fd=fd)
                        os.chown(prefix.name, *make, dir_fd=fd, follow_symlinks=False)
                    nxt = self._open(prefix, _DIR)
                os.close(fd)
                fd = nxt
        try:
            yield fd
        finally:
            os.close(fd)

    def walk(self, relative: PurePosixPath | None = None) -> Iterator[tuple[str, list[str], list[str], int]]:
        """os.fwalk() of directory ``relative``: by descriptors, never into a link, whatever is swapped in."""
        with self.directory(relative) as fd:
            yield from os.fwalk(".", dir_fd=fd)

    def lstat(self, relative: PurePosixPath) -> os.stat_result | None:
        """lstat of ``relative`` (None if it, or a directory on its way, does not exist)."""
        try:
            with self.directory(_parent(relative)) as fd:
                return os.stat(relative.name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def readlink(self, relative: PurePosixPath) -> str | None:
        """The target ``relative`` points to, if it is a symlink (its directories resolved inside the root)."""
        try:
            with self.directory(_parent(relative)) as fd:
                return os.readlink(relative.name, dir_fd=fd)
        except (FileNotFoundError, NotBeneath):
            return None
        except OSError as e:
            if e.errno == errno.EINVAL:  # not a link
                return None
            raise

    def read(self, relative: PurePosixPath) -> str:
        fd = self._open(relative, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd) as fh:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise NotBeneath(0, f"/{relative} under {self.path} is not a regular file")
            return fh.read()

    def write(self, relative: PurePosixPath, text: str, *, owner: tuple[int, int], mode: int,
              make: tuple[int, int] | None = None) -> None:
        """Replace (or create) file ``relative`` with ``text``, owned by ``owner``; ``make`` (uid, gid):
        create missing directories on the way, owned by them."""
        with self.directory(_parent(relative), make=make) as dirfd:
            temporary = f".{relative.name}.lxdmig-{secrets.token_hex(4)}"
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=dirfd)
            try:
                with os.fdopen(fd, "w") as fh:
                    fh.write(text)
                    fh.flush()
                    os.fchown(fd, *owner)
                    os.fchmod(fd, mode)
                os.rename(temporary, relative.name, src_dir_fd=dirfd, dst_dir_fd=dirfd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temporary, dir_fd=dirfd)
                raise

    def remove(self, relative: PurePosixPath) -> bool:
        """Remove file (or link) ``relative``; False if it was not there."""
        try:
            with self.directory(_parent(relative)) as fd:
                os.unlink(relative.name, dir_fd=fd)
                return True
        except FileNotFoundError:
            return False
