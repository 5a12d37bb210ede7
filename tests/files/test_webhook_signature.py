"""The timestamped webhook signature: header parsing, tolerance window, rotation. Pure."""

from __future__ import annotations

import pytest

from flows.files.webhook_signature import SignatureRefused, digest, parse_header, sign, verify

NOW = 1_800_000_000
KEY = b"k" * 20
OLD = b"o" * 20
BODY = b'{"event_type": "file_uploaded"}'


def test_a_signed_body_verifies_and_nothing_else_does():
    header = parse_header(sign(KEY, BODY, NOW), tolerance=300, now=NOW)
    verify(header, [KEY], BODY)
    for secrets, body in [([OLD], BODY), ([KEY], BODY + b" "), ([KEY], b"")]:
        with pytest.raises(SignatureRefused, match="does not match"):
            verify(header, secrets, body)


def test_the_timestamp_is_part_of_what_is_signed():
    moved = f"t={NOW + 1},v1={digest(KEY, NOW, BODY)}"
    with pytest.raises(SignatureRefused, match="does not match"):
        verify(parse_header(moved, tolerance=300, now=NOW), [KEY], BODY)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "missing"),
        ("", "missing"),
        ("sha256=" + "0" * 64, "malformed"),
        (f"t={NOW}", "malformed"),
        (f"v1={'0' * 64}", "malformed"),
        (f"t=abc,v1={'0' * 64}", "malformed"),
        (f"t={NOW},v1={'0' * 63}", "malformed"),
        (f"t={NOW},v1={'Z' * 64}", "malformed"),
        (f"t={NOW}," + ",".join([f"v1={'0' * 64}"] * 9), "malformed"),
        (f"t={NOW - 301},v1={'0' * 64}", "tolerance"),
        (f"t={NOW + 301},v1={'0' * 64}", "tolerance"),
    ],
)
def test_bad_headers_are_refused_with_a_reason(value, reason):
    with pytest.raises(SignatureRefused, match=reason):
        parse_header(value, tolerance=300, now=NOW)


def test_the_edges_of_the_window_are_inside():
    for stamp in (NOW - 300, NOW + 300):
        assert parse_header(sign(KEY, BODY, stamp), tolerance=300, now=NOW).timestamp == stamp


def test_several_v1_values_and_several_secrets_serve_a_rotation():
    both = sign([KEY, OLD], BODY, NOW)
    assert both.count("v1=") == 2
    verify(parse_header(both, tolerance=300, now=NOW), [OLD], BODY)  # receiver not rotated yet
    verify(parse_header(sign(OLD, BODY, NOW), tolerance=300, now=NOW), [KEY, OLD], BODY)  # sender not yet
    extra = sign(KEY, BODY, NOW) + ",v0=whatever,scheme=next"  # unknown parts are ignored
    verify(parse_header(extra, tolerance=300, now=NOW), [KEY], BODY)
