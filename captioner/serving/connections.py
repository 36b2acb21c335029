"""Connections that cannot tie the server up: uvicorn's h11 protocol with a deadline for each request head and a cap
on open connections, and the uvicorn configuration that ``captioner serve`` (and the tests) run with.

uvicorn bounds idle keep-alive connections only: a connection that sends nothing, or half its headers, stays open
for ever, and enough of them exhaust the process's file descriptors. Here every connection that is not being served
(no request in progress) must complete its request head within ``header_timeout``; at ``max_connections`` open, a new
connection closes the one idle the longest, or, when every connection is busy, is answered 503 and closed. Request
bodies are bounded by :class:`captioner.serving.middleware.BodyLimit` (size and stalls), and a graceful shutdown
waits ``shutdown_timeout`` at most.
"""

from __future__ import annotations

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from captioner.serving.settings import ServeSettings

_BUSY_TEXT = b"too many connections; retry shortly\n"
BUSY = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\nretry-after: 1\r\n"
        b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_BUSY_TEXT), _BUSY_TEXT))


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a request-head deadline and a connection cap (class attributes, set by
    :func:`guarded_protocol`)."""

    header_timeout: float = 10.0
    max_connections: int = 100

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.header_timer = None
        self.idle_since = self.loop.time()
        if len(self.connections) > self.max_connections and not self._evict_idle():
            self.connections.discard(self)
            transport.write(BUSY)
            transport.close()
            return
        self._watch()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        super().connection_lost(exc)

    def is_idle(self) -> bool:
        """No request in progress: the connection waits for (the rest of) a request head."""
        return (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing()

    def _watch(self) -> None:
        """Arm the head deadline when the connection becomes idle; disarm it while a request is served."""
        if self.transport.is_closing():
            return
        if not self.is_idle():
            self._stop_timer()
        elif self.header_timer is None:
            self.idle_since = self.loop.time()
            self.header_timer = self.loop.call_later(self.header_timeout, self._head_too_slow)

    def _stop_timer(self) -> None:
        if getattr(self, "header_timer", None) is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def _head_too_slow(self) -> None:
        self.header_timer = None
        if self.is_idle():
            self.transport.close()

    def _evict_idle(self) -> bool:
        """Close the connection idle the longest (not this one); False when every other connection is busy."""
        idle = [c for c in self.connections if c is not self and isinstance(c, GuardedH11Protocol) and c.is_idle()]
        if not idle:
            return False
        oldest = min(idle, key=lambda c: c.idle_since)
        oldest._stop_timer()
        oldest.transport.close()
        return True


def guarded_protocol(header_timeout: float, max_connections: int) -> type[GuardedH11Protocol]:
    """A :class:`GuardedH11Protocol` class with these limits (uvicorn builds one protocol object per connection)."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,),
                {"header_timeout": header_timeout, "max_connections": max_connections})


def server_config(app, host: str, port: int, settings: ServeSettings, log_level: str = "warning") -> uvicorn.Config:
    """The uvicorn configuration of ``captioner serve``: guarded h11 connections, no ``server`` header, keep-alive
    and graceful-shutdown deadlines from ``settings``."""
    return uvicorn.Config(
        app, host=host, port=port, log_level=log_level, server_header=False,
        http=guarded_protocol(settings.header_timeout, settings.max_connections),
        timeout_keep_alive=settings.keep_alive_timeout, timeout_graceful_shutdown=settings.shutdown_timeout,
        backlog=settings.backlog,
    )
