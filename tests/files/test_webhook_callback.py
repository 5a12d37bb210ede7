"""The callback allow-list: names, addresses, networks; every resolved address checked; the POST
goes to the checked address with the original Host, and never follows a redirect."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from flows.files.webhook_callback import CallbackHosts, check_callback, post_checked
from flows.files.webhook_http import Rejected


@pytest.mark.parametrize(
    ("listed", "url"),
    [
        (["93.184.216.34"], "http://93.184.216.34/hook"),  # a listed public address
        (["127.0.0.1"], "http://127.0.0.1:8080/hook"),  # loopback, listed as an address
        (["10.0.0.0/8"], "https://10.1.2.3/hook"),  # private, inside a listed network
        (["::1"], "http://[::1]:9/hook"),
        (["localhost", "127.0.0.0/8", "::1"], "http://localhost:9/hook"),  # name and its addresses
    ],
)
def test_allowed_callbacks(listed, url):
    target = check_callback(url, CallbackHosts.parse(listed))
    assert target.addresses


@pytest.mark.parametrize(
    ("listed", "url", "reason"),
    [
        ([], "http://93.184.216.34/hook", "not on the callback allow-list"),
        (["example.com"], "http://127.0.0.1/hook", "not on the callback allow-list"),
        (["10.0.0.0/8"], "http://11.0.0.1/hook", "not on the callback allow-list"),
        (["localhost"], "http://localhost/hook", "non-public address"),  # listed name -> loopback
        (["LOCALHOST."], "http://localhost./hook", "non-public address"),
        (["no-such-host.invalid"], "http://no-such-host.invalid/hook", "does not resolve"),
        (["127.0.0.1"], "ftp://127.0.0.1/hook", "must be an http"),
        (["127.0.0.1"], "http://127.0.0.1:99999/hook", "not a valid URL"),
        (["127.0.0.1"], 42, "must be an http"),
    ],
)
def test_refused_callbacks(listed, url, reason):
    with pytest.raises(Rejected, match=reason) as info:
        check_callback(url, CallbackHosts.parse(listed))
    assert info.value.status == 400


def test_non_public_addresses_are_never_public():
    import ipaddress

    from flows.files.webhook_callback import _public

    for text in [
        "127.0.0.1",
        "10.0.0.1",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "::1",
        "fe80::1",
        "fc00::1",
        "::ffff:127.0.0.1",
        "240.0.0.1",
    ]:
        assert not _public(ipaddress.ip_address(text)), text
    assert _public(ipaddress.ip_address("93.184.216.34"))


class _Recorder(BaseHTTPRequestHandler):
    seen: list = []
    status = 200

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).seen.append((self.headers["Host"], json.loads(body)))
        self.send_response(self.status)
        if self.status == 302:
            self.send_header("Location", "http://127.0.0.1:1/elsewhere")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def recorder():
    handler = type("Recorder", (_Recorder,), {"seen": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server, handler
    server.shutdown()
    server.server_close()


def test_the_post_reaches_the_checked_address_with_the_original_host(recorder):
    server, handler = recorder
    port = server.server_port
    allowed = CallbackHosts.parse(["localhost", "127.0.0.1", "::1"])
    assert post_checked(f"http://localhost:{port}/hook", {"id": "e1"}, allowed, 10) == 200
    assert handler.seen == [(f"localhost:{port}", {"id": "e1"})]


def test_a_redirect_is_an_error_not_a_second_request(recorder):
    server, handler = recorder
    handler.status = 302
    with pytest.raises(RuntimeError, match="302"):
        post_checked(
            f"http://127.0.0.1:{server.server_port}/hook",
            {"id": "e1"},
            CallbackHosts.parse(["127.0.0.1"]),
            10,
        )
    assert len(handler.seen) == 1


def test_the_post_checks_again_before_connecting(recorder):
    server, handler = recorder
    with pytest.raises(Rejected):
        post_checked(f"http://127.0.0.1:{server.server_port}/hook", {}, CallbackHosts.parse([]), 10)
    assert handler.seen == []
