"""The guard around every request of ``camkit serve`` (an ASGI middleware, `Guard`).

- **Host**: a request whose ``Host`` header is not a name of this server is refused (403), so a
  web page cannot reach a loopback server through DNS rebinding (its own name resolved to
  127.0.0.1). The names are the loopback ones (`LOOPBACK`) unless the server is told others
  (``camkit serve --allowed-hosts``; ``*`` lets any name in).
- **Origin**: a request a browser sends from another page (an ``Origin`` that is not the
  ``Host`` itself) is refused (403): no other site can make the server work for it. Behind a
  reverse proxy, pass the browser's ``Host`` through (and name it in ``--allowed-hosts``).
- **Headers**: every answer says ``X-Content-Type-Options: nosniff``, ``X-Frame-Options: DENY``,
  ``Referrer-Policy: no-referrer`` and a ``Content-Security-Policy`` (the page loads its own
  scripts and styles only; the API docs also run the inline script that starts Swagger UI).
- **Log**: each failed request is one line on the ``camkit.serve`` logger (method, path, status,
  the answer's ``detail``); an unexpected exception is answered 500 with its one-line reason and
  logged the same way, never as a traceback.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Iterable, Optional
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("camkit.serve")

LOOPBACK = ("127.0.0.1", "localhost", "::1")  # the names a loopback server answers to by default
PAGE_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
               "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'")
DOCS_POLICY = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
               "img-src 'self' data:; worker-src 'self' blob:; frame-ancestors 'none'; base-uri 'none'")
DETAIL_BYTES = 4096  # the most of a failed answer's body read for its log line


def hostname(host: str) -> str:
    """``host`` (a ``Host`` header or a URL's netloc) without its port, lower case: ``[::1]:80`` -> ``::1``."""
    h = host.strip().lower()
    if h.startswith("["):
        h = h[1:h.find("]")] if "]" in h else h[1:]
    elif h.count(":") == 1:
        h = h.split(":")[0]
    return h.rstrip(".")


class Guard:
    """Host and Origin checks, security headers and one-line logs around ``app`` (see the module).
    ``allowed_hosts``: the names the server answers to (None: `LOOPBACK`; ``"*"``: any);
    ``docs_paths``: the paths of the API docs (their pages need an inline script)."""

    def __init__(self, app: ASGIApp, allowed_hosts: Optional[Iterable[str]] = None,
                 docs_paths: Iterable[str] = ("/docs", "/redoc")) -> None:
        self.app = app
        names = LOOPBACK if allowed_hosts is None else tuple(allowed_hosts)
        self.any_host = "*" in names
        self.hosts = {hostname(n) for n in names if n != "*"}
        self.docs_paths = tuple(docs_paths)

    def refusal(self, headers: Headers) -> Optional[str]:
        """Why a request with these headers is refused (None: it is not)."""
        host = headers.get("host")
        if host is not None and not self.any_host and hostname(host) not in self.hosts:
            return (f"Host {host!r} is not a name of this server (it answers to {', '.join(sorted(self.hosts))}; "
                    "camkit serve --allowed-hosts adds names)")
        origin = headers.get("origin")
        if origin is not None and (origin == "null" or urlsplit(origin).netloc.lower() != (host or "").lower()):
            return f"cross-origin request from {origin!r} refused: the page of another site cannot use this server"
        return None

    def security_headers(self, path: str) -> list[tuple[bytes, bytes]]:
        docs = any(path == p or path.startswith(p + "/") for p in self.docs_paths)
        return [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                (b"referrer-policy", b"no-referrer"),
                (b"content-security-policy", (DOCS_POLICY if docs else PAGE_POLICY).encode())]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        where = f"{scope['method']} {scope['path']}"
        extra = self.security_headers(scope["path"])
        why = self.refusal(Headers(scope=scope))
        if why is not None:
            await answer(send, 403, why, extra)
            log.warning("%s -> 403: %s", where, why)
            return
        state: dict[str, Any] = {"status": None, "body": b""}

        async def guarded_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            elif message["type"] == "http.response.body" and (state["status"] or 0) >= 400:
                state["body"] = (state["body"] + message.get("body", b""))[:DETAIL_BYTES]
            await send(message)

        try:
            await self.app(scope, receive, guarded_send)
        except Exception as e:  # noqa: BLE001 - a bug: answer and log one line, keep serving
            why = f"internal error: {type(e).__name__}: {one_line(str(e))}"
            log.error("%s -> 500: %s", where, why)
            if state["status"] is None:
                await answer(send, 500, why, extra)
            return
        if (state["status"] or 0) >= 400:
            log.warning("%s -> %d: %s", where, state["status"], detail(state["body"]))


def one_line(text: str, limit: int = 300) -> str:
    """``text`` on one line, cut after ``limit`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit] + "..."


def detail(body: bytes) -> str:
    """A failed answer's ``detail`` on one line (its body's start when that is not the usual JSON)."""
    try:
        found = json.loads(body)["detail"]
    except (ValueError, KeyError, TypeError):
        return one_line(body.decode("utf-8", "replace"))
    return one_line(found if isinstance(found, str) else json.dumps(found))


async def answer(send: Send, status: int, message: str, headers: list[tuple[bytes, bytes]]) -> None:
    """Send ``{"detail": message}`` with ``status``."""
    body = json.dumps({"detail": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})
