"""Raw byte relay between a TLS socket and a pair of pipes, in one thread.

rsync runs over the helper's TLS connection: after the ``rsync`` request is
accepted, both ends stop framing and copy bytes both ways (the source side
between rsync's remote-shell pipes and the socket, the helper between the
socket and ``rsync --server``). One thread with non-blocking I/O, because an
SSL socket must not be read and written from two threads at once.
"""

from __future__ import annotations

import os
import select
import socket
import ssl
import time

CHUNK = 256 * 1024


class RelayTimeout(TimeoutError):
    """Nothing moved in either direction for too long."""


def relay(sock: socket.socket, rfd: int, wfd: int, *, idle_timeout: float, end_on_rfd_eof: bool) -> None:
    """Copy ``rfd`` -> ``sock`` and ``sock`` -> ``wfd``.

    Ends when the socket reaches end-of-file (after flushing to ``wfd``), or,
    with ``end_on_rfd_eof``, when ``rfd`` does (after flushing to the
    socket). ``wfd`` is closed when the socket ends. Raises RelayTimeout
    after ``idle_timeout`` seconds without progress.
    """
    sock.setblocking(False)
    os.set_blocking(rfd, False)
    os.set_blocking(wfd, False)
    to_sock = b""
    to_fd = b""
    rfd_open = sock_open = True
    wfd_open = True
    last_progress = time.monotonic()
    sfd = sock.fileno()
    while True:
        if not sock_open and not to_fd:
            break
        if end_on_rfd_eof and not rfd_open and not to_sock:
            break
        if not sock_open and wfd_open and not to_fd:
            os.close(wfd)
            wfd_open = False
        if not wfd_open:
            to_fd = b""  # nobody to give it to
        readers: list[int] = []
        if rfd_open and not to_sock:
            readers.append(rfd)
        if sock_open and not to_fd:
            readers.append(sfd)
        writers: list[int] = []
        if to_sock:
            writers.append(sfd)
        if to_fd and wfd_open:
            writers.append(wfd)
        readable: list[int]
        writable: list[int]
        if sock_open and not to_fd and isinstance(sock, ssl.SSLSocket) and sock.pending():
            readable, writable = [sfd], []  # TLS already holds decrypted bytes: select would not see them
        else:
            readable, writable, _ = select.select(readers, writers, [], 1.0)
        moved = False
        if sfd in readable:
            try:
                data = sock.recv(CHUNK)
                if data:
                    to_fd += data
                else:
                    sock_open = False
                moved = True
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                pass
            except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError):
                sock_open = False
                moved = True
        if rfd in readable:
            data = os.read(rfd, CHUNK)
            if data:
                to_sock += data
            else:
                rfd_open = False
            moved = True
        if sfd in writable or (to_sock and sfd in readable):
            try:
                sent = sock.send(to_sock)
                to_sock = to_sock[sent:]
                moved = moved or sent > 0
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                pass
            except (BrokenPipeError, ConnectionResetError, ssl.SSLEOFError):
                sock_open = False
                to_sock = b""
        if wfd in writable and to_fd:
            try:
                written = os.write(wfd, to_fd)
                to_fd = to_fd[written:]
                moved = True
            except BlockingIOError:
                pass
            except BrokenPipeError:
                to_fd = b""
                wfd_open = False
                os.close(wfd)
        if moved:
            last_progress = time.monotonic()
        elif time.monotonic() - last_progress > idle_timeout:
            raise RelayTimeout(f"nothing moved for {idle_timeout:g} s")
    if wfd_open:
        os.close(wfd)
