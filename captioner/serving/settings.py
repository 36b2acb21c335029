"""What ``captioner serve`` bounds and whom it answers: each default written once, here (the CLI's options are built
from these fields by ``captioner.cli.options.add_field``). Light on purpose: building the CLI imports this module, not
FastAPI or torch."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
MIN_BODY_RATE = 10_000  # bytes/s: a body arriving slower than this on average is cut off (see ServeSettings)


@dataclass(frozen=True)
class ServeSettings:
    """Limits and exposure of the server.

    Args:
        max_upload_mb: largest request body; larger ones get 413 before they are parsed.
        max_queue: requests allowed to wait for the model; more get 503.
        max_batch: photos captioned together at most, across waiting requests.
        max_request_megapixels: decoded pixels allowed in one request, by the sizes the files declare (read from
            their headers, without decoding); the files beyond it are refused by name, not decoded.
        header_timeout: seconds a connection may take to send a complete request head (from its opening, or from
            the end of its previous response); then it is closed.
        body_timeout: seconds a request body may stall: it must keep arriving, at least ``MIN_BODY_RATE`` bytes/s
            on average after this grace; a body that does not is answered 408 and the connection closed.
        keep_alive_timeout: seconds an idle keep-alive connection stays open between requests.
        max_connections: open connections at most; one more closes the connection idle the longest (one waiting
            for a request head), or is refused with 503 when every connection is busy.
        backlog: connections the system queues before the server accepts them, and so the most it accepts at once
            (each takes a file descriptor before it can be counted: ``captioner serve`` fits ``max_connections +
            backlog`` under the open-file limit).
        shutdown_timeout: seconds a graceful shutdown (SIGTERM, Ctrl+C) waits for requests in flight.
        allowed_hosts: ``Host`` header names answered (any port); others get 400, so that a DNS-rebinding page
            cannot read the API. ``None`` accepts any Host (the app alone does not know its address;
            ``captioner serve`` passes the names of the address it listens on); ``"*"`` in the list accepts any.
        cors_origins: origins (``http://host:port``) allowed to call the API from their pages (CORS); every other
            cross-origin request that changes state (POST...) gets 403.
        min_confidence: a caption whose confidence is below this is marked ``needs_review`` (captions of a model
            without a confidence model never are).
    """

    max_upload_mb: float = 10.0
    max_queue: int = 16
    max_batch: int = 32
    max_request_megapixels: float = 400.0
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keep_alive_timeout: float = 5.0
    max_connections: int = 100
    backlog: int = 2048
    shutdown_timeout: float = 10.0
    allowed_hosts: tuple[str, ...] | None = None
    cors_origins: tuple[str, ...] = ()
    min_confidence: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ValueError(f"min_confidence is a probability in [0, 1], got {self.min_confidence!r}")


def hosts_for(bind: str, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The ``Host`` names to answer when listening on ``bind``: the loopback names, the bind address itself and
    ``extra``; on a wildcard address (``0.0.0.0``, ``::``) also this machine's names and addresses."""
    names = [*LOOPBACK_HOSTS]
    if _is_wildcard(bind):
        names += _machine_names()
    elif bind:
        names.append(bind)
    names += extra
    return tuple(dict.fromkeys(name.strip("[]").lower() for name in names if name))


def address_for(host: str, port: int) -> str:
    """``HOST:PORT`` with an IPv6 address in brackets (``[::1]:8000``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def url_for(host: str, port: int) -> str:
    """``http://HOST:PORT/`` with an IPv6 address in brackets (``http://[::]:8000/``, not ``http://:::8000/``)."""
    return f"http://{address_for(host, port)}/"


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def _machine_names() -> list[str]:
    """This machine's host name, fully qualified name and the addresses they resolve to (best effort)."""
    import socket

    names = [socket.gethostname(), socket.getfqdn()]
    try:
        names += [info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None)]
    except OSError:
        pass
    return names
