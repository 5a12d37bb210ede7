"""Webhook intake over real HTTP on 127.0.0.1: signatures, limits, roots, allow-list, callback."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from flows.files.webhook import IntakeConfig, Rejected, make_server, parse_event, signature

from .test_report import Receiver

SECRET = b"s3cret-s3cret-s3cret"


@pytest.fixture
def config(tmp_path):
    root = tmp_path / "incoming"
    root.mkdir()
    (root / "a.txt").write_text("hello\n")
    return IntakeConfig(
        secret=SECRET,
        roots=(root.resolve(),),
        processor="cp {input} {output}",
        output=str(tmp_path / "out"),
        allow_hosts=frozenset({"127.0.0.1"}),
        callback_hosts=frozenset({"127.0.0.1"}),  # the receivers below listen on loopback
    )


def body(**event) -> bytes:
    return json.dumps(event).encode()


@pytest.mark.parametrize(
    ("event", "signed", "status"),
    [
        ({"event_type": "file_uploaded", "file_path": "a.txt"}, None, 401),
        ({"event_type": "file_uploaded", "file_path": "a.txt"}, "sha256=00", 401),
        ({"event_type": "nope"}, True, 400),
        ({"event_type": "file_uploaded", "file_path": "../../etc/passwd"}, True, 403),
        ({"event_type": "file_uploaded", "file_path": "/etc/passwd"}, True, 403),
        ({"event_type": "file_uploaded", "file_path": "missing.txt"}, True, 404),
        ({"event_type": "batch_request", "inputs": []}, True, 400),
        ({"event_type": "url_submitted", "source_url": "https://evil.example/x"}, True, 403),
        ({"event_type": "url_submitted", "source_url": "file:///etc/passwd"}, True, 400),
        ({"event_type": "file_uploaded", "file_path": "a.txt", "callback_url": "ftp://x"}, True, 400),
        (
            {"event_type": "file_uploaded", "file_path": "a.txt", "callback_url": "http://10.0.0.1/"},
            True,
            400,
        ),
        ({"event_type": "file_uploaded", "file_path": "a.txt", "id": 7}, True, 400),
        ({"event_type": "file_uploaded", "file_path": "a.txt", "id": "a" * 129}, True, 400),
    ],
)
def test_rejected_events(config, event, signed, status):
    raw = body(**event)
    header = signature(SECRET, raw) if signed is True else signed
    with pytest.raises(Rejected) as info:
        parse_event(config, raw, header)
    assert info.value.status == status


def test_the_signature_is_checked_before_the_json(config):
    """A bad signature on a body that is not even JSON is 401, not 400: nothing is parsed first."""
    with pytest.raises(Rejected) as info:
        parse_event(config, b"{not json", signature(b"another-secret-of-16+", b"{not json"))
    assert info.value.status == 401


def test_a_previous_secret_is_accepted_while_senders_rotate(config):
    import dataclasses

    rotating = dataclasses.replace(config, secret=b"new-secret-new-secret", previous_secrets=(SECRET,))
    raw = body(event_type="file_uploaded", id="evt-rot", file_path="a.txt")
    assert parse_event(rotating, raw, signature(SECRET, raw))["id"] == "evt-rot"
    assert parse_event(rotating, raw, signature(b"new-secret-new-secret", raw))["id"] == "evt-rot"


def test_an_event_without_id_gets_one_and_a_replay_key_from_its_signed_bytes(config):
    raw = body(event_type="file_uploaded", file_path="a.txt")
    header = signature(SECRET, raw, timestamp=1_800_000_000)
    first = parse_event(config, raw, header, now=1_800_000_000)
    again = parse_event(config, raw, header, now=1_800_000_000)
    assert first["id"] != again["id"] and first["replay_key"] == again["replay_key"]
    assert (
        parse_event(config, raw, signature(SECRET, raw, 1_800_000_001), now=1_800_000_000)["replay_key"]
        != (first["replay_key"])
    )


def test_malformed_json_is_400(config):
    with pytest.raises(Rejected) as info:
        parse_event(config, b"{not json", signature(SECRET, b"{not json"))
    assert info.value.status == 400


def post(url: str, raw: bytes, header: str | None) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, data=raw, method="POST", headers={"Content-Type": "application/json"}
    )
    if header:
        request.add_header("X-Opsflow-Signature", header)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def wait_for_callback(receiver: Receiver, seconds: float = 90) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if receiver.bodies:
            return json.loads(receiver.bodies[0])
        time.sleep(0.2)
    raise AssertionError("no callback arrived")


@pytest.fixture
def intake(config, prefect_api, tmp_path, monkeypatch):
    monkeypatch.setenv("OPSFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("OPSFLOW_DATABASE_URL", raising=False)
    server = make_server(config, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/webhook"
    server.shutdown()
    server.server_close()


def test_signed_file_upload_runs_the_batch_and_calls_back(intake, config):
    receiver = Receiver()
    try:
        raw = body(
            event_type="file_uploaded",
            id="evt-1",
            file_path="a.txt",
            callback_url=receiver.url.replace("json://", "http://"),
        )
        status, answer = post(intake, raw, signature(SECRET, raw))
        assert status == 202 and answer == {"accepted": True, "id": "evt-1"}
        result = wait_for_callback(receiver)
    finally:
        receiver.close()
    assert result["id"] == "evt-1" and result["status"] == "completed"
    assert result["result"]["processed"] == 1
    assert (Path(config.output) / "a.txt").read_text() == "hello\n"


def test_bad_requests_over_http_start_nothing(intake, config):
    raw = body(event_type="file_uploaded", file_path="a.txt")
    assert post(intake, raw, None) == (
        401,
        {"accepted": False, "error": "missing X-Opsflow-Signature header"},
    )
    assert post(intake, raw, "sha256=" + "0" * 64)[0] == 401
    assert post(intake, raw, signature(SECRET, raw + b" "))[1]["error"] == "signature does not match the body"
    big = b"x" * (1024 * 1024 + 1)
    assert post(intake, big, signature(SECRET, big))[0] == 413
    outside = body(event_type="batch_request", inputs=["/etc"])
    assert post(intake, outside, signature(SECRET, outside))[0] == 403
    assert post(intake.replace("/webhook", "/other"), raw, signature(SECRET, raw))[0] == 404
    time.sleep(1)
    assert not Path(config.output).exists()


def test_url_submitted_downloads_from_an_allowed_host(config, prefect_api, tmp_path, monkeypatch):
    import dataclasses

    site = tmp_path / "site"
    site.mkdir()
    (site / "report.csv").write_text("id,email\n1,a@b\n")
    files = ThreadingHTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(site)))
    files.RequestHandlerClass.log_message = lambda *a: None
    threading.Thread(target=files.serve_forever, daemon=True).start()
    # A port other than 80 and 443 is allowed only when listed with it.
    config = dataclasses.replace(config, allow_hosts=frozenset({f"127.0.0.1:{files.server_port}"}))
    monkeypatch.setenv("OPSFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("OPSFLOW_DATABASE_URL", raising=False)
    server = make_server(config, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    intake = f"http://127.0.0.1:{server.server_port}/webhook"
    receiver = Receiver()
    try:
        raw = body(
            event_type="url_submitted",
            id="evt-2",
            source_url=f"http://127.0.0.1:{files.server_port}/report.csv",
            callback_url=receiver.url.replace("json://", "http://"),
        )
        assert post(intake, raw, signature(SECRET, raw))[0] == 202
        result = wait_for_callback(receiver)
    finally:
        receiver.close()
        files.shutdown()
        files.server_close()
        server.shutdown()
        server.server_close()
    assert result["status"] == "completed" and result["result"]["processed"] == 1
    assert (Path(config.output) / "evt-2-report.csv").read_text() == "id,email\n1,a@b\n"


def test_a_redirect_cannot_leave_the_allow_list(config, tmp_path):
    import dataclasses
    from http.server import BaseHTTPRequestHandler

    from flows.files.webhook import download

    class Redirect(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(302)
            self.send_header("Location", f"http://localhost:{self.server.server_port}/internal")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        listed = config.allow_hosts | {f"127.0.0.1:{server.server_port}"}
        with pytest.raises(Rejected) as info:
            download(
                dataclasses.replace(config, allow_hosts=listed),
                f"http://127.0.0.1:{server.server_port}/go",
                "ev1",
            )
        assert info.value.status == 403 and "localhost" in str(info.value)
    finally:
        server.shutdown()
        server.server_close()


def test_a_sender_that_writes_its_whole_oversized_body_first_still_reads_the_413(intake):
    """The refused body is drained for a moment before the close, so no reset eats the answer."""
    import socket
    import urllib.parse

    port = urllib.parse.urlsplit(intake).port
    big = b"x" * (4 * 1024 * 1024)
    head = (
        f"POST /webhook HTTP/1.1\r\nHost: intake\r\nContent-Length: {len(big)}\r\n"
        f"X-Opsflow-Signature: {signature(SECRET, big)}\r\n\r\n"
    ).encode()
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", port), timeout=60) as conn:
            conn.sendall(head + big)  # everything first, as simple clients do
            answer = conn.recv(65536)
        assert answer.startswith(b"HTTP/1.1 413 ")
