"""How a dump's memory pages reach the destination: its CRIU page server over TLS, or (``--page-transport
plain``) a plain TCP connection the destination's helper makes to this host and authenticates with a token
sent over the TLS control connection (page_channel).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import socket
from collections.abc import Callable
from dataclasses import dataclass

from lxdmig import page_channel, proc
from lxdmig.client import HelperClient
from lxdmig.migrate.report import MoveFailed
from lxdmig.netutil import free_port


@dataclass
class PageTarget:
    """Where a dump sends its pages: the destination's TLS page server at ``port``, or the plain page
    connection ``sock`` (port 0). ``options``: CRIU's options for it. Closing it closes this process's
    copy of the connection (CRIU keeps its own while it runs)."""

    options: list[str]
    port: int
    sock: socket.socket | None
    cut_tls: Callable[[], object] | None = None

    @property
    def fds(self) -> list[int]:
        return [self.sock.fileno()] if self.sock is not None else []

    def cut(self) -> None:
        """End CRIU's connection to the page server (the destination stopped answering)."""
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)  # (the connection itself, CRIU's copy too)
        elif self.cut_tls is not None:
            self.cut_tls()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()

    def __enter__(self) -> PageTarget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def page_target(client: HelperClient, migration: str, directory: str, parent: str | None, *, plain: bool,
                ports: tuple[int, int]) -> PageTarget:
    """A page server on the destination writing into images/``directory``, and how CRIU reaches it
    (``plain``: over a page connection from ``ports`` here)."""
    sock = page_connection(client, migration, ports) if plain else None
    try:
        port = client.start_page_server(migration, directory, parent)
    except BaseException:
        if sock is not None:
            sock.close()
        raise
    if sock is not None:
        return PageTarget(["--page-server", "--ps-socket", str(sock.fileno())], 0, sock)
    host = client.remote.host
    return PageTarget(["--page-server", "--address", host, "--port", str(port)], port, None,
                      lambda: proc.run(["ss", "-K", "-tn", "dst", host, "dport", "=", f":{port}"], timeout=10,
                                       check=False))


def page_connection(client: HelperClient, migration: str, ports: tuple[int, int]) -> socket.socket:
    """--page-transport plain: a TCP connection from the destination's helper to this host (a port in
    ``ports``), which it authenticated with a token sent over the TLS control connection (page_channel)."""
    listener = page_channel.Listener(client.channel.sock.getsockname()[0], ports)
    token = page_channel.new_token()
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="page-channel") as pool:
        accepted = pool.submit(listener.accept, token, page_channel.HANDSHAKE_TIMEOUT * 2)
        try:
            client.open_page_channel(migration, listener.port, token)
        except BaseException:
            listener.close()  # (accept() gives up at once)
            with contextlib.suppress(Exception):
                accepted.result().close()
            raise
        try:
            return accepted.result()
        except page_channel.PageChannelError as e:
            raise MoveFailed(str(e)) from None
        finally:
            listener.close()


def lazy_endpoint(client: HelperClient, ports: tuple[int, int]) -> tuple[str, int]:
    """Post-copy over TLS: where this host's CRIU serves the pages to the destination's lazy-pages daemon
    (the address the control connection comes from, a free port in ``ports``)."""
    address = client.channel.sock.getsockname()[0]
    port = free_port(address, *ports)
    if port is None:
        raise MoveFailed(f"no free port in {ports} ([client] lazy_ports) for the post-copy page server")
    return address, port
