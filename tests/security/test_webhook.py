"""`files serve` attacked over real HTTP: the intake runs in this process on a free port.

Each test is one hole that was open on the hand-written http.server intake: an unbounded body
read, connections held forever, replayed requests, event ids and links that wrote or read
outside their folders, callbacks to any host. Malformed requests go through raw sockets.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
import time
import types
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from flows.files import webhook_callback
from flows.files.webhook import IntakeConfig, Rejected, download, make_server, parse_event, signature
from tests.receivers import Receiver

SECRET = b"s3cret-s3cret-s3cret"
DEADLINE = 60.0  # generous: these wait for events, they never assert durations
MiB = 1024 * 1024


@pytest.fixture
def config(tmp_path: Path) -> IntakeConfig:
    root = tmp_path / "root"
    (root / "sub" / "deep").mkdir(parents=True)
    (root / "a.txt").write_text("hello\n")
    (root / "sub" / "b.txt").write_text("b\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("TOP SECRET\n")
    (root / "sub" / "deep" / "filelink").symlink_to(outside / "secret")
    return IntakeConfig(
        secret=SECRET,
        roots=(root.resolve(),),
        processor="cp {input} {output}",
        output=str(tmp_path / "out"),
        allow_hosts=frozenset({"127.0.0.1"}),
    )


@pytest.fixture
def serve(tmp_path, monkeypatch) -> Iterator:
    """Start the intake for a config; returns its port. Records go to the test's own home."""
    from flows.records.db import dispose_engines

    monkeypatch.setenv("OPSFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("OPSFLOW_DATABASE_URL", raising=False)
    servers = []

    def start(config: IntakeConfig) -> int:
        server = make_server(config, "127.0.0.1", 0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server.server_port

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()
    dispose_engines()


def with_limits(config: IntakeConfig, **limits) -> IntakeConfig:
    from flows.files.webhook_http import HttpLimits

    return dataclasses.replace(config, limits=HttpLimits(**limits))


def event(**fields) -> bytes:
    return json.dumps(fields).encode()


def request(body: bytes, header: str | None, *, extra: str = "") -> bytes:
    sign = f"X-Opsflow-Signature: {header}\r\n" if header else ""
    return (
        f"POST /webhook HTTP/1.1\r\nHost: intake\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{sign}{extra}Connection: close\r\n\r\n"
    ).encode() + body


def exchange(port: int, head: bytes, body: Iterable[bytes] = ()) -> tuple[int | None, bytes]:
    """Send `head`, then `body` from another thread (the server may stop reading at any point),
    and read the answer until the server closes: (status or None when none came, raw answer).
    The sending side stays open (as a stalled client's would; uvicorn drops half-closed ones)."""
    conn = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)

    def send() -> None:
        try:
            conn.sendall(head)
            for chunk in body:
                conn.sendall(chunk)
        except OSError:
            pass  # refused and closed mid-body: what the server should do

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    answer = b""
    try:
        while chunk := conn.recv(65536):
            answer += chunk
    except TimeoutError:
        pass
    except ConnectionResetError:
        pass
    finally:
        conn.close()
    sender.join(DEADLINE)
    status_line = answer.split(b"\r\n", 1)[0].split()
    return (int(status_line[1]) if len(status_line) > 1 else None), answer


def status_of(port: int, body: bytes, header: str | None) -> int | None:
    return exchange(port, request(body, header))[0]


class PeakMemory:
    """The process's resident memory, sampled every few milliseconds: (peak - start) in MiB."""

    def __init__(self) -> None:
        self.start = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) // 1024

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth(self) -> int:
        return self.peak - self.start


def zeros(total: int) -> Iterator[bytes]:
    block = bytes(MiB)
    for _ in range(total // MiB):
        yield block


def chunked(total: int) -> Iterator[bytes]:
    block = b"%x\r\n" % MiB + bytes(MiB) + b"\r\n"
    for _ in range(total // MiB):
        yield block
    yield b"0\r\n\r\n"


# --- body size: enforced while reading, whatever the length says -----------------------------


@pytest.mark.parametrize(
    ("framing", "body", "expected"),
    [
        ("Content-Length: -1\r\n", zeros, 400),  # h11 refuses the length itself and reads nothing
        ("Transfer-Encoding: chunked\r\n", chunked, 413),  # counted chunk by chunk, cut at the cap
        ("", zeros, 400),  # no length: an empty body (not JSON); the rest is never read
    ],
    ids=["negative-length", "chunked", "absent-length"],
)
def test_a_huge_body_is_refused_while_it_arrives_and_memory_stays_flat(
    config, serve, framing, body, expected
):
    port = serve(config)
    header = signature(SECRET, b"")  # well formed and fresh: only the body may stop the request
    head = f"POST /webhook HTTP/1.1\r\nHost: intake\r\nX-Opsflow-Signature: {header}\r\n{framing}\r\n"
    with PeakMemory() as memory:
        status, answer = exchange(port, head.encode(), body(256 * MiB))
    assert status == expected, answer
    assert memory.growth < 64, f"memory grew by {memory.growth} MiB while a 256 MiB body was refused"
    # The server is still there for everyone else.
    assert status_of(port, event(event_type="file_uploaded", file_path="a.txt"), None) == 401


def test_a_declared_length_over_the_limit_is_refused_before_reading(config, serve):
    port = serve(with_limits(config, max_body=1024))
    raw = b"x" * 2048
    assert status_of(port, raw, signature(SECRET, raw)) == 413


# --- slow clients: head, body and connections are bounded ------------------------------------


def test_headers_without_a_body_get_408_instead_of_holding_the_connection(config, serve):
    port = serve(with_limits(config, body_timeout=1.0))
    head = (
        f"POST /webhook HTTP/1.1\r\nHost: intake\r\nContent-Length: 100\r\n"
        f"X-Opsflow-Signature: {signature(SECRET, b'')}\r\n\r\n"
    ).encode()
    status, answer = exchange(port, head)
    assert status == 408, answer


@pytest.mark.parametrize(
    "sent", [b"", b"POST /webhook HTTP/1.1\r\nHost: intake\r\n"], ids=["idle", "half-head"]
)
def test_a_connection_that_never_completes_its_head_is_closed(config, serve, sent):
    port = serve(with_limits(config, header_timeout=1.0))
    status, answer = exchange(port, sent)
    assert status == 408, answer  # answered and closed: the read ended with the server's close


def test_a_head_over_the_size_limit_is_refused(config, serve):
    port = serve(with_limits(config, max_header_size=16 * 1024))
    raw = event(event_type="file_uploaded", file_path="a.txt")
    status, _ = exchange(port, request(raw, signature(SECRET, raw), extra=f"X-Padding: {'p' * 32768}\r\n"))
    assert status in (400, 431)


def test_connections_over_the_limit_get_503_and_the_server_recovers(config, serve):
    port = serve(with_limits(config, max_connections=3, header_timeout=DEADLINE * 2))
    held = []
    try:
        for _ in range(3):
            conn = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
            conn.sendall(b"POST /webhook HTTP/1.1\r\n")  # a head that never ends
            held.append(conn)
        raw = event(event_type="file_uploaded", file_path="a.txt")
        deadline = time.monotonic() + DEADLINE
        statuses = []
        while time.monotonic() < deadline and 503 not in statuses:
            statuses.append(status_of(port, raw, None))
            time.sleep(0.1)
        assert 503 in statuses, statuses
    finally:
        for conn in held:
            conn.close()
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline and status_of(port, raw, None) == 503:
        time.sleep(0.1)
    assert status_of(port, raw, None) == 401


# --- signatures: timestamped, within a window, checked before anything else ------------------


@pytest.mark.parametrize("age", [-1000, 1000], ids=["from-the-future", "expired"])
def test_a_correctly_signed_request_outside_the_tolerance_window_is_401(config, serve, age):
    port = serve(config)
    raw = event(event_type="file_uploaded", file_path="a.txt")
    status, answer = exchange(port, request(raw, signature(SECRET, raw, time.time() - age)))
    assert status == 401 and b"tolerance" in answer


def test_the_old_unstamped_signature_is_refused(config, serve):
    import hashlib
    import hmac

    port = serve(config)
    raw = event(event_type="file_uploaded", file_path="a.txt")
    assert status_of(port, raw, "sha256=" + hmac.new(SECRET, raw, hashlib.sha256).hexdigest()) == 401


# --- replays: an event id runs once, across restarts and concurrent deliveries ----------------


def webhook_runs(event_id: str, expected: int) -> list:
    """The `webhook-<id>` flow runs once `expected` of them exist and all have ended."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    by_name = FlowRunFilter(name=FlowRunFilterName(any_=[f"webhook-{event_id}"]))
    deadline = time.monotonic() + DEADLINE * 2
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(flow_run_filter=by_name)
            if len(runs) >= expected and all(r.state and r.state.is_final() for r in runs):
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"no {expected} finished run(s) of webhook-{event_id}")
    # The intake's thread for the event ends too, its log lines sent while the API is there.
    for thread in threading.enumerate():
        if thread.name == f"webhook-{event_id}":
            thread.join(DEADLINE)
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=DEADLINE)
    return runs


def test_a_replayed_request_is_409_even_after_a_restart(config, serve, prefect_api):
    event_id = f"evt-{uuid.uuid4().hex[:8]}"
    raw = event(event_type="file_uploaded", id=event_id, file_path="a.txt")
    header = signature(SECRET, raw)
    port = serve(config)
    assert status_of(port, raw, header) == 202
    assert status_of(port, raw, header) == 409
    # Re-signed (a sender's retry, or an attacker's new timestamp): the id is what counts.
    assert status_of(port, raw, signature(SECRET, raw)) == 409
    restarted = serve(config)
    assert status_of(restarted, raw, header) == 409
    assert len(webhook_runs(event_id, 1)) == 1


def test_concurrent_deliveries_of_one_event_start_one_batch(config, serve, prefect_api):
    event_id = f"evt-{uuid.uuid4().hex[:8]}"
    raw = event(event_type="file_uploaded", id=event_id, file_path="a.txt")
    header = signature(SECRET, raw)
    port = serve(config)
    with ThreadPoolExecutor(8) as pool:
        statuses = sorted(pool.map(lambda _: status_of(port, raw, header), range(8)))
    assert statuses == [202] + [409] * 7
    assert len(webhook_runs(event_id, 1)) == 1


def test_a_replayed_request_without_an_id_is_409(config, serve, prefect_api):
    raw = event(event_type="file_uploaded", file_path="a.txt")
    header = signature(SECRET, raw)
    port = serve(config)
    status, answer = exchange(port, request(raw, header))
    assert status == 202
    assert status_of(port, raw, header) == 409
    webhook_runs(json.loads(answer.split(b"\r\n\r\n", 1)[1])["id"], 1)


# --- paths: ids, downloads and outputs stay in their folders ---------------------------------


@pytest.mark.parametrize("event_id", ["../../evil", "../../../../", ".hidden", "a/b", "a\\b", "x" * 129, ""])
def test_an_unsafe_event_id_is_400_and_writes_nothing(config, serve, tmp_path, event_id):
    port = serve(config)
    raw = event(event_type="url_submitted", id=event_id, source_url="http://127.0.0.1:9/f.txt")
    assert status_of(port, raw, signature(SECRET, raw)) == 400
    assert not list(tmp_path.glob("evil*")) and not list(tmp_path.glob("*-f.txt"))


@pytest.fixture
def file_site(tmp_path) -> Iterator[str]:
    site = tmp_path / "site"
    site.mkdir()
    (site / "f.txt").write_text("downloaded\n")
    files = ThreadingHTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(site)))
    files.RequestHandlerClass.log_message = lambda *a: None
    threading.Thread(target=files.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{files.server_port}"
    files.shutdown()
    files.server_close()


def listing(config: IntakeConfig, site: str) -> IntakeConfig:
    """`config` with the site's port allowed too (`127.0.0.1` alone allows 80 and 443)."""
    port = site.rsplit(":", 1)[1]
    return dataclasses.replace(config, allow_hosts=config.allow_hosts | {f"127.0.0.1:{port}"})


def test_a_download_never_follows_a_link_planted_as_incoming(config, tmp_path, file_site):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (config.roots[0] / "incoming").symlink_to(elsewhere)
    with pytest.raises(Rejected) as info:
        download(listing(config, file_site), f"{file_site}/f.txt", "evt-1")
    assert info.value.status == 403 and "incoming" in str(info.value)
    assert list(elsewhere.iterdir()) == []


def test_a_download_replaces_a_planted_link_instead_of_writing_through_it(config, tmp_path, file_site):
    incoming = config.roots[0] / "incoming"
    incoming.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched\n")
    (incoming / "evt-1-f.txt").symlink_to(victim)
    written = Path(download(listing(config, file_site), f"{file_site}/f.txt", "evt-1"))
    assert written.parent == incoming and written.read_text() == "downloaded\n"
    assert victim.read_text() == "untouched\n"


def serve_handler(handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    handler.log_message = lambda *a: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_a_link_swapped_in_for_incoming_during_the_download_is_never_written_through(config, tmp_path):
    root = config.roots[0]
    (root / "incoming").mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    class Swapping(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - while the file is on its way, incoming/ becomes a link
            (root / "incoming").rename(root / "incoming.old")
            (root / "incoming").symlink_to(elsewhere)
            self.send_response(200)
            self.send_header("Content-Length", "11")
            self.end_headers()
            self.wfile.write(b"downloaded\n")

    server = serve_handler(Swapping)
    try:
        site = f"http://127.0.0.1:{server.server_port}"
        written = Path(download(listing(config, site), f"{site}/f.txt", "evt-1"))
    finally:
        server.shutdown()
        server.server_close()
    assert list(elsewhere.iterdir()) == []
    assert root in written.parents and written.read_text() == "downloaded\n"


# --- names longer than the file system takes: refused with a reason -------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"event_type": "file_uploaded", "file_path": "x" * 300},
        {"event_type": "file_uploaded", "file_path": "/".join(["d" * 200] * 30)},
        {"event_type": "batch_request", "inputs": ["sub", "sub/" + "y" * 256]},
    ],
    ids=["long-name", "long-path", "long-input"],
)
def test_an_over_long_name_is_400_with_a_reason(config, serve, fields):
    port = serve(config)
    raw = event(id=f"evt-{uuid.uuid4().hex[:8]}", **fields)
    status, answer = exchange(port, request(raw, signature(SECRET, raw)))
    assert status == 400, answer
    assert b"longer than the file system allows" in answer


# --- downloads: the same address checks as callbacks, on every hop ----------------------------


def url_event(url: str) -> bytes:
    return event(event_type="url_submitted", id=f"evt-{uuid.uuid4().hex[:8]}", source_url=url)


@pytest.mark.parametrize(
    ("listed", "url", "status", "reason"),
    [
        ({"localhost"}, "http://localhost/f.txt", 403, "non-public address"),  # listed name -> loopback
        ({"127.0.0.1"}, "http://127.0.0.1:8080/f.txt", 403, "port 8080"),  # a port nobody listed
        ({"127.0.0.1"}, "http://127.0.0.1:22/f.txt", 403, "port 22"),
        ({"127.0.0.1:8080"}, "http://127.0.0.1:8081/f.txt", 403, "port 8081"),
        ({"10.0.0.0/8"}, "http://169.254.169.254/latest/meta-data/", 403, "not on the download allow-list"),
        ({"127.0.0.1"}, "http://user:pw@127.0.0.1/f.txt", 400, "user name or password"),
    ],
)
def test_a_download_url_gets_the_callback_address_checks(config, listed, url, status, reason):
    raw = url_event(url)
    with pytest.raises(Rejected) as info:
        parse_event(dataclasses.replace(config, allow_hosts=frozenset(listed)), raw, signature(SECRET, raw))
    assert info.value.status == status and reason in str(info.value)
    assert "pw" not in str(info.value)


def test_a_redirect_to_a_listed_name_that_resolves_to_loopback_is_refused(config):
    reached = []

    class Internal(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            reached.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", "9")
            self.end_headers()
            self.wfile.write(b"internal\n")

    internal = serve_handler(Internal)

    class Redirect(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(302)
            self.send_header("Location", f"http://localhost:{internal.server_port}/admin")
            self.end_headers()

    outer = serve_handler(Redirect)
    site = f"http://127.0.0.1:{outer.server_port}"
    allowed = dataclasses.replace(
        listing(config, site), allow_hosts=listing(config, site).allow_hosts | {"localhost"}
    )
    try:
        with pytest.raises(Rejected) as info:
            download(allowed, f"{site}/go", "evt-1")
    finally:
        for server in (outer, internal):
            server.shutdown()
            server.server_close()
    assert info.value.status == 403
    assert reached == []


def test_a_download_connects_to_the_address_it_checked(config, monkeypatch):
    """A name whose DNS answer changes after the check (rebinding) is still fetched from the
    address that was checked."""
    import socket as sockets

    class Site(BaseHTTPRequestHandler):
        text = b""

        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", str(len(self.text)))
            self.end_headers()
            self.wfile.write(self.text)

    good = serve_handler(type("Good", (Site,), {"text": b"checked\n"}))
    evil = ThreadingHTTPServer(("127.0.0.2", good.server_port), type("Evil", (Site,), {"text": b"rebound\n"}))
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    real = sockets.getaddrinfo

    def answering(address: str):
        def getaddrinfo(host, port, *args, **kwargs):
            return real(address if host == "files.example" else host, port, *args, **kwargs)

        return getaddrinfo

    # The checks hear 127.0.0.1; any later lookup of the name (a connection by name) 127.0.0.2.
    checker = types.SimpleNamespace(
        getaddrinfo=answering("127.0.0.1"), gaierror=sockets.gaierror, SOCK_STREAM=sockets.SOCK_STREAM
    )
    monkeypatch.setattr(webhook_callback, "socket", checker)
    monkeypatch.setattr(sockets, "getaddrinfo", answering("127.0.0.2"))
    allowed = dataclasses.replace(
        config, allow_hosts=frozenset({f"files.example:{good.server_port}", "127.0.0.1"})
    )
    try:
        written = Path(download(allowed, f"http://files.example:{good.server_port}/f.txt", "evt-1"))
    finally:
        for server in (good, evil):
            server.shutdown()
            server.server_close()
    assert written.read_text() == "checked\n"


def test_an_output_is_never_written_through_a_link_in_the_output_directory(tmp_path):
    from flows.files.discover import InputFile
    from flows.files.processors import parse_processor
    from flows.files.work import attempt

    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.txt").write_text("a\n")
    out = tmp_path / "out"
    out.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / "sub").symlink_to(elsewhere)
    outcome = attempt(
        InputFile(root / "sub" / "a.txt", root),
        parse_processor("cp {input} {output}"),
        output_dir=out,
        timeout=60,
        print_="x",
    )
    assert outcome.status == "failed" and "outside the output directory" in (outcome.error or "")
    assert list(elsewhere.iterdir()) == []


# --- discovery: the batch walks under the same roots as `files run --root` --------------------


def test_a_link_out_of_the_root_inside_a_named_folder_is_never_processed(config, serve, prefect_api):
    event_id = f"evt-{uuid.uuid4().hex[:8]}"
    port = serve(config)
    raw = event(event_type="batch_request", id=event_id, inputs=["sub"])
    assert status_of(port, raw, signature(SECRET, raw)) == 202
    webhook_runs(event_id, 1)
    out = Path(config.output)
    copied = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
    assert not any(p.read_text() == "TOP SECRET\n" for p in copied), copied


# --- callbacks: allow-listed hosts only, every resolved address checked -----------------------


@pytest.mark.parametrize(
    ("listed", "host"),
    [
        ((), "127.0.0.1"),  # nothing listed: no callback at all
        (("example.com",), "127.0.0.1"),  # another host listed
        (("localhost",), "localhost"),  # listed by name, but the name resolves to loopback
        (("127.0.0.2",), "127.0.0.1"),  # another address listed
    ],
)
def test_a_callback_off_the_allow_list_is_refused_at_intake(config, serve, listed, host):
    receiver = Receiver()
    try:
        port = serve(dataclasses.replace(config, callback_hosts=frozenset(listed)))
        raw = event(
            event_type="file_uploaded",
            id=f"evt-{uuid.uuid4().hex[:8]}",
            file_path="a.txt",
            callback_url=f"http://{host}:{receiver.port}/hook",
        )
        status, answer = exchange(port, request(raw, signature(SECRET, raw)))
        assert status == 400 and b"callback" in answer
    finally:
        receiver.close()


def test_a_callback_listed_as_an_address_gets_the_result(config, serve, prefect_api):
    """Loopback only because it is listed as an address; the POST reaches the checked address."""
    receiver = Receiver()
    try:
        port = serve(dataclasses.replace(config, callback_hosts=frozenset({"127.0.0.1"})))
        event_id = f"evt-{uuid.uuid4().hex[:8]}"
        raw = event(
            event_type="file_uploaded",
            id=event_id,
            file_path="a.txt",
            callback_url=f"http://127.0.0.1:{receiver.port}/hook",
        )
        assert status_of(port, raw, signature(SECRET, raw)) == 202
        webhook_runs(event_id, 1)
        assert [json.loads(b)["id"] for b in receiver.bodies] == [event_id]
    finally:
        receiver.close()
