"""Real notification receivers on 127.0.0.1 for tests: an HTTP endpoint and an SMTP server."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer


class Receiver:
    """A webhook receiver for apprise's json:// and form://: records each POST body; `delay`
    makes it slow (each request waits that long, or until `close`, before it is recorded)."""

    def __init__(self, delay: float = 0.0) -> None:
        bodies = self.bodies = []
        closing = self.closing = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                if delay:
                    closing.wait(delay)
                bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_port
        self.url = f"json://127.0.0.1:{self.port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()


class MailReceiver:
    """An SMTP server (aiosmtpd) keeping every message; `url` is apprise's mailto:// for it."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        messages = self.messages = []

        class Handler:
            async def handle_DATA(self, server, session, envelope):  # noqa: N802
                messages.append(envelope)
                return "250 OK"

        with socket.socket() as probe:  # aiosmtpd needs a concrete port to check it started
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=port)
        self.controller.start()
        self.url = f"mailto://127.0.0.1:{port}?from=opsflow@example.com&to=ops@example.com&mode=insecure"

    def close(self) -> None:
        self.controller.stop()
