"""The release target's processes: one small HTTP service per color, and a router.

    python -m flows.release.service instance --root ROOT --color blue --port 8081
    python -m flows.release.service router --root ROOT --port 8080 --blue-port 8081 --green-port 8082

An instance serves the release its color link pointed to when it started (a restart deploys):
its files, and `GET /health` → 200 {"status": "ok", "version", "color"} — or 503 while the
release's `HEALTH` file says `fail`, which is how a release reports itself broken. The router
forwards each request to the color `ROOT/current` points to at that moment, so switching
traffic is one rename of that link. Standard library only: it runs wherever Python does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

FORWARD_TIMEOUT = 5.0


class InstanceHandler(SimpleHTTPRequestHandler):
    color = "blue"
    version = "?"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path.split("?", 1)[0] != "/health":
            return super().do_GET()
        health = Path(self.directory) / "HEALTH"
        failing = health.is_file() and health.read_text().strip().lower() == "fail"
        doc = {"status": "failing" if failing else "ok", "version": self.version, "color": self.color}
        self._json(503 if failing else 200, doc)

    def _json(self, status: int, doc: dict) -> None:
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - http.server's signature
        pass


class RouterHandler(InstanceHandler):
    root = Path(".")
    ports: dict[str, int] = {}

    def do_GET(self) -> None:  # noqa: N802
        try:
            color = os.readlink(self.root / "current")
        except OSError:
            color = None
        if color not in self.ports:
            return self._json(503, {"status": "no live color", "root": str(self.root)})
        url = f"http://127.0.0.1:{self.ports[color]}{self.path}"
        try:
            with urllib.request.urlopen(url, timeout=FORWARD_TIMEOUT) as response:
                status, body, kind = response.status, response.read(), response.headers.get("Content-Type")
        except urllib.error.HTTPError as exc:
            status, body, kind = exc.code, exc.read(), exc.headers.get("Content-Type")
        except OSError as exc:
            return self._json(502, {"status": f"{color} unreachable: {exc}", "color": color})
        self.send_response(status)
        self.send_header("Content-Type", kind or "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Opsflow-Color", color)
        self.end_headers()
        self.wfile.write(body)


def serve(handler, port: int) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    print(f"listening on 127.0.0.1:{port}", flush=True)
    server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flows.release.service", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="role", required=True)
    inst = sub.add_parser("instance", help="serve the release a color link points to")
    inst.add_argument("--root", type=Path, required=True)
    inst.add_argument("--color", choices=("blue", "green"), required=True)
    inst.add_argument("--port", type=int, required=True)
    router = sub.add_parser("router", help="forward to the color ROOT/current points to")
    router.add_argument("--root", type=Path, required=True)
    router.add_argument("--port", type=int, required=True)
    router.add_argument("--blue-port", type=int, required=True)
    router.add_argument("--green-port", type=int, required=True)
    args = parser.parse_args(argv)
    if args.role == "instance":
        directory = (args.root / args.color).resolve()
        if not directory.is_dir():
            print(f"{args.root / args.color}: no release to serve", file=sys.stderr)
            return 3
        version = (directory / "VERSION").read_text().strip() if (directory / "VERSION").is_file() else "?"
        handler = type("Instance", (InstanceHandler,), {"color": args.color, "version": version})
        serve(partial(handler, directory=str(directory)), args.port)
    else:
        ports = {"blue": args.blue_port, "green": args.green_port}
        handler = type("Router", (RouterHandler,), {"root": args.root.resolve(), "ports": ports})
        serve(partial(handler, directory=str(args.root)), args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
