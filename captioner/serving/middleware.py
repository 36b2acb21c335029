"""The server's ASGI middleware: whom it answers (:class:`ExposureGuard`: the ``Host`` allow-list and cross-origin
refusals), what its pages may load (:class:`OwnOriginOnly`) and how much and how slowly a request body may arrive
(:class:`BodyLimit`)."""

from __future__ import annotations

import asyncio

from fastapi.responses import JSONResponse
from starlette.datastructures import Headers

from captioner.serving.settings import MIN_BODY_RATE

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# The pages (the photo page, Swagger UI, ReDoc) load nothing from other hosts: ReDoc's sidebar logo would come from
# its CDN, and an offline or private user's browser should not try.
PAGE_POLICY = b"default-src 'self' 'unsafe-inline' data: blob:"


def host_name(value: str) -> str:
    """The name in a ``Host`` header, without its port: ``[::1]:8000`` → ``::1``, ``Localhost.:80`` → ``localhost``."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[1:end] if end > 0 else ""
    if value.count(":") == 1:
        value = value.rsplit(":", 1)[0]
    return value.rstrip(".")


def is_cross_origin(headers: Headers, scheme: str, cors_origins: frozenset[str]) -> bool:
    """Whether a browser sent this request from another origin's page (and that origin is not allowed): by
    ``Origin`` against the request's own ``scheme://host``, and by ``Sec-Fetch-Site`` where the browser sends it.
    A request with neither header comes from a program, not a page, and is not cross-origin."""
    origin = headers.get("origin")
    if origin is not None and origin.rstrip("/").lower() in cors_origins:
        return False
    site = headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return True
    if origin is None:
        return False
    own = f"{scheme}://{headers.get('host', '')}".lower()
    return origin.rstrip("/").lower() not in (own, own.removesuffix(":80" if scheme == "http" else ":443"))


class ExposureGuard:
    """ASGI middleware: 400 for a ``Host`` that is not one of ``allowed_hosts`` (``None`` or ``"*"``: any), so that a
    DNS-rebinding page cannot read the API from a user's browser; 403 for a cross-origin request that changes state
    (POST...), unless its origin is one of ``cors_origins``."""

    def __init__(self, app, allowed_hosts: tuple[str, ...] | None, cors_origins: tuple[str, ...] = ()) -> None:
        self.app = app
        any_host = allowed_hosts is None or "*" in allowed_hosts
        self.allowed = None if any_host else frozenset(host_name(h) for h in allowed_hosts)
        self.cors_origins = frozenset(o.rstrip("/").lower() for o in cors_origins)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        if self.allowed is not None and host_name(host) not in self.allowed:
            detail = (f"Host {host!r} is not served here (it answers {', '.join(sorted(self.allowed))}); open one of "
                      "those, or start the server with --allowed-host NAME")
            return await JSONResponse({"detail": detail}, status_code=400)(scope, receive, send)
        if scope.get("method", "GET") not in SAFE_METHODS and is_cross_origin(headers, scope.get("scheme", "http"),
                                                                              self.cors_origins):
            detail = (f"cross-origin {scope['method']} refused (origin {headers.get('origin', '?')!r}); start the "
                      "server with --cors-origin ORIGIN to allow a page from that origin to call the API")
            return await JSONResponse({"detail": detail}, status_code=403)(scope, receive, send)
        await self.app(scope, receive, send)


class OwnOriginOnly:
    """ASGI middleware: HTML pages get a Content-Security-Policy that lets them load from this server only
    (:data:`PAGE_POLICY`)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_policy(message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if dict(headers).get(b"content-type", b"").startswith(b"text/html"):
                    message = {**message, "headers": headers + [(b"content-security-policy", PAGE_POLICY)]}
            await send(message)

        await self.app(scope, receive, send_with_policy)


class BodyLimit:
    """ASGI middleware: answer 413 to any request whose body exceeds ``max_bytes`` (by its Content-Length, or while
    reading it), before the app parses it; answer 408 and close the connection when the body stalls: it must keep
    arriving, each byte within ``timeout`` seconds plus what ``MIN_BODY_RATE`` allows for the bytes received so far.
    The app then reads the body from memory."""

    def __init__(self, app, max_bytes: int, timeout: float = 30.0) -> None:
        self.app, self.max_bytes, self.timeout = app, max_bytes, timeout

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(scope, receive, send, 413)
        chunks, size, more = [], 0, True
        loop = asyncio.get_running_loop()
        start = loop.time()
        while more:
            deadline = start + self.timeout + size / MIN_BODY_RATE
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.0))
            except TimeoutError:
                return await self._refuse(scope, receive, send, 408)
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                return await self._refuse(scope, receive, send, 413)
        body, sent = b"".join(chunks), False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope, receive, send, status: int) -> None:
        if status == 413:
            detail = (f"upload too large: the limit is {self.max_bytes / 2**20:g} MB per request "
                      "(captioner serve --max-upload-mb)")
        else:
            detail = (f"the request body stalled: nothing arrived for {self.timeout:g} s or it came slower than "
                      f"{MIN_BODY_RATE // 1000} KB/s (captioner serve --body-timeout)")
        response = JSONResponse({"detail": detail}, status_code=status, headers={"connection": "close"})
        await response(scope, receive, send)
