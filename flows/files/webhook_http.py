"""The webhook's HTTP server: Starlette on uvicorn (h11), with every limit a public endpoint needs.

- request head: at most `max_header_size` bytes (400 from h11 while it arrives, 431 when it came
  whole in one read) and complete within `header_timeout` seconds of the connection opening, or
  of its first byte on a kept-alive connection (else 408 and closed). uvicorn has no such timeout of its own (its
  keep-alive timer only runs between requests), so `_GuardedH11Protocol` adds it to uvicorn's
  h11 protocol; a reverse proxy in front remains the stronger guard on an open network.
- body: at most `max_body` bytes, counted as they arrive whatever the headers claim (a
  Content-Length over the cap is refused before reading; a negative or malformed one is refused by
  h11 with 400; chunked bodies are counted chunk by chunk), else 413; complete within
  `body_timeout` seconds, else 408. After a refusal the rest of the body is never parsed nor
  kept: the connection discards what still arrives for at most `LINGER` seconds, so the client
  can read the answer, then closes.
- connections: at most `max_connections` open at once (uvicorn's limit_concurrency), beyond
  that requests get 503.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from dataclasses import dataclass
from typing import Any

import h11
from starlette.requests import ClientDisconnect, Request
from uvicorn.protocols.http.h11_impl import H11Protocol


class Rejected(Exception):
    """A request that starts nothing; carries the HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class HttpLimits:
    max_body: int = 1024 * 1024
    body_timeout: float = 30.0
    header_timeout: float = 10.0
    max_header_size: int = 16 * 1024
    max_connections: int = 100
    keep_alive: int = 5


async def read_body(request: Request, limits: HttpLimits) -> bytes:
    """The request body, counted as it arrives: Rejected(413) past `max_body`, (408) past the timeout."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limits.max_body:
        raise Rejected(413, f"the body is larger than {_size(limits.max_body)}")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(limits.body_timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limits.max_body:
                    raise Rejected(413, f"the body is larger than {_size(limits.max_body)}")
                chunks.append(chunk)
    except TimeoutError:
        raise Rejected(408, f"the body did not arrive within {limits.body_timeout:g} s") from None
    except ClientDisconnect:
        raise Rejected(400, "the client went away before the body was complete") from None
    return b"".join(chunks)


def _size(count: int) -> str:
    return f"{count // (1024 * 1024)} MiB" if count % (1024 * 1024) == 0 else f"{count} bytes"


class _LingeringTransport:
    """A connection's transport whose close, while the client may still be sending a body the
    server refused to read, first discards incoming bytes for a moment (`LINGER` seconds).

    Closing a socket with unread bytes makes the kernel send a reset, and a reset can destroy the
    answer (a 413 or 401) before the client reads it; so the answer is sent, the sending side
    shut, and whatever still arrives is thrown away until the client closes or the time is up, as
    nginx's lingering close does. Nothing read while lingering is kept.
    """

    def __init__(self, transport: asyncio.Transport, protocol: _GuardedH11Protocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self.lingering = False

    def close(self) -> None:
        transport = self._transport
        if self.lingering or transport.is_closing():
            return
        if self._protocol.conn.their_state not in (h11.SEND_BODY, h11.ERROR):
            transport.close()  # the request was read to its end: nothing to drain
            return
        self.lingering = True
        try:
            if transport.can_write_eof():
                transport.write_eof()  # after the answer still buffered, the client sees the end
        except (OSError, RuntimeError):
            transport.close()
            return
        transport.resume_reading()
        self._protocol.loop.call_later(LINGER, transport.close)

    def is_closing(self) -> bool:
        return self.lingering or self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


#: Seconds a refused request's connection goes on discarding what the client still sends.
LINGER = 2.0


class _GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on each request head (set on the subclass) and a
    lingering close (`_LingeringTransport`)."""

    head_timeout: float = 10.0
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_LingeringTransport(transport, self))  # type: ignore[arg-type]
        self._arm_head_deadline()

    def data_received(self, data: bytes) -> None:
        if getattr(self.transport, "lingering", False):
            return  # refused and closing: discarded, never parsed nor buffered
        super().data_received(data)
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            # A head has started on a kept-alive connection (uvicorn just stopped its keep-alive
            # timer): the deadline runs from its first byte, never reset by trickled bytes.
            if self._head_timer is None:
                self._arm_head_deadline()
        else:
            self._disarm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_deadline()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        if self.conn.their_state is h11.SEND_BODY and not self.transport.is_closing():
            # Answered before the body ended (a refusal): uvicorn would keep discarding body bytes
            # for as long as they trickle in, each one restarting its keep-alive timer.
            self.transport.close()
        super().on_response_complete()

    def _arm_head_deadline(self) -> None:
        self._disarm_head_deadline()
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_deadline_passed)

    def _disarm_head_deadline(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_deadline_passed(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        self.logger.warning("Request head not complete within %g s: connection closed.", self.head_timeout)
        try:
            if self.conn.our_state is h11.IDLE:
                message = b"the request head did not arrive in time\n"
                response = h11.Response(
                    status_code=408,
                    reason=b"Request Timeout",
                    headers=[
                        (b"content-type", b"text/plain; charset=utf-8"),
                        (b"content-length", str(len(message)).encode()),
                        (b"connection", b"close"),
                    ],
                )
                self.transport.write(
                    self.conn.send(response)
                    + self.conn.send(h11.Data(data=message))
                    + self.conn.send(h11.EndOfMessage())
                )
        except h11.LocalProtocolError:
            pass  # the state does not allow an answer: closing is all that is left
        self.transport.close()


class _HeadSizeLimit:
    """Refuses (431) a request whose head is over the limit although it came whole in one read.

    h11 enforces the limit only on what it must buffer while a head is incomplete; a head that
    arrives in a single read (up to the event loop's read size) passes it, so it is measured here.
    """

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
            size += sum(len(name) + len(value) + 4 for name, value in scope["headers"])
            if size > self.limit:
                body = b"the request head is too large\n"
                await send(
                    {
                        "type": "http.response.start",
                        "status": 431,
                        "headers": [
                            (b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


class _ConsoleLog(logging.Handler):
    """uvicorn's own warnings (bad requests, concurrency limit) as the command line's log lines."""

    def emit(self, record: logging.LogRecord) -> None:
        from flows.console import Console

        level = record.levelname if record.levelname in ("DEBUG", "INFO", "WARNING", "ERROR") else "ERROR"
        Console("webhook").log(level, record.getMessage())


_log_lock = threading.Lock()


def _route_uvicorn_log() -> None:
    with _log_lock:
        logger = logging.getLogger("uvicorn.error")
        if not any(isinstance(h, _ConsoleLog) for h in logger.handlers):
            logger.addHandler(_ConsoleLog(logging.WARNING))
            logger.setLevel(logging.WARNING)
            logger.propagate = False


class LimitedServer:
    """An ASGI app served by uvicorn in the calling thread, on a socket bound at construction.

    Binding first makes a busy port an OSError the caller can report (uvicorn would exit the
    process), and port 0 a known port before serving starts.
    """

    def __init__(self, app: Any, host: str, port: int, limits: HttpLimits) -> None:
        import uvicorn

        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        self.socket = socket.create_server((host, port), family=family, backlog=2048)
        self.server_port: int = self.socket.getsockname()[1]
        protocol = type("GuardedH11Protocol", (_GuardedH11Protocol,), {"head_timeout": limits.header_timeout})
        _route_uvicorn_log()
        self.server = uvicorn.Server(
            uvicorn.Config(
                _HeadSizeLimit(app, limits.max_header_size),
                http=protocol,
                ws="none",
                lifespan="off",
                log_config=None,
                access_log=False,
                server_header=False,
                limit_concurrency=limits.max_connections,
                h11_max_incomplete_event_size=limits.max_header_size,
                timeout_keep_alive=limits.keep_alive,
                timeout_graceful_shutdown=max(5, int(limits.body_timeout) + 5),
            )
        )
        self._serving = threading.Event()
        self._stopped = threading.Event()

    def serve_forever(self) -> None:
        """Serve until `shutdown()` (or SIGINT/SIGTERM when called from the main thread)."""
        self._serving.set()
        try:
            self.server.run(sockets=[self.socket])
        finally:
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop serving (finishing the requests in progress) and wait until it has stopped."""
        self.server.should_exit = True
        if self._serving.is_set():
            self._stopped.wait()

    def server_close(self) -> None:
        self.socket.close()
