"""Notifications through apprise: channel names → URLs, sent with short timeouts, never fatal.

A channel (`slack`, `email`, `oncall` ...) is configured by name, so a URL and its credentials
never need to be a flow run's parameter:
- `OPSFLOW_NOTIFY_<CHANNEL>`: one or more apprise URLs separated by spaces or commas
  (`json://hooks.internal/ops`, `mailto://user:pass@smtp.internal?to=ops@x`), or
- inside a flow run, the `opsflow-notification-channels` block named `default`
  (`prefect block register -m blocks`), whose URLs are secret fields.
Sending never raises and never waits more than NOTIFY_TIMEOUT (+1 s): a receiver that is down
or slow is a warning, never a failed or stalled run. URLs are shown without credentials.
"""

from __future__ import annotations

import ipaddress
import os
import re
import threading
from collections.abc import Callable, Iterable
from typing import Any

NOTIFY_TIMEOUT = 5.0
BLOCK_NAME = "default"


def with_timeouts(url: str, timeout: float = NOTIFY_TIMEOUT) -> str:
    """apprise's connect/read timeouts (`cto`, `rto`), unless the URL sets its own."""
    if "cto=" in url or "rto=" in url:
        return url
    return f"{url}{'&' if '?' in url else '?'}cto={timeout:g}&rto={timeout:g}"


def redact(url: str) -> str:
    """`scheme://host/…`: never a user, password or token. apprise URLs often carry tokens
    where a host would stand (`tgram://BOT:TOKEN/chat`, `slack://TokenA/TokenB`), and a
    password may hold `/`, `?` or `#` unencoded, so the host is shown only when it is plainly
    one (a dotted name, `localhost` or an IP address, and a numeric port) and nothing after
    it holds an `@`; else `scheme://…`."""
    scheme, sep, rest = url.partition("://")
    if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]{0,31}", scheme):
        return "(invalid URL)"
    end = re.search(r"[/?#]", rest)
    authority, after = (rest[: end.start()], rest[end.start() :]) if end else (rest, "")
    host = authority.rsplit("@", 1)[-1]
    path = re.split(r"[?#]", after, maxsplit=1)[0]
    return f"{scheme}://{host}/…" if "@" not in path and _plain_host(host) else f"{scheme}://…"


def _plain_host(text: str) -> bool:
    """A host name with a dot, `localhost` or an IP address, optionally `:PORT`."""
    match = re.fullmatch(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::[0-9]{1,5})?", text)
    if match is None:
        return False
    host = match["host"].strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host == "localhost" or (
            "." in host and re.search(r"[A-Za-z]", host.rsplit(".", 1)[-1]) is not None
        )
    return True


def channel_urls(channel: str) -> list[str]:
    """The apprise URLs of a channel: environment first, then the channels block."""
    value = os.environ.get(f"OPSFLOW_NOTIFY_{re.sub(r'[^A-Z0-9]', '_', channel.upper())}", "")
    urls = [u for u in re.split(r"[\s,]+", value) if u]
    if urls:
        return urls
    return _block_urls().get(channel, [])


def target_urls(target: Any) -> list[str]:
    """What a `notify` option names: an apprise URL (also as a SecretStr), a reference to one
    (`env:NAME`, `block:NAME`: URLs separated by spaces or commas), or a channel name."""
    from flows.secrets import reference, resolve_reference, reveal

    value = str(reveal(target)).strip()
    if reference(value):
        value = resolve_reference(value, "notify") or ""
    elif "://" not in value:
        return channel_urls(value)
    return [u for u in re.split(r"[\s,]+", value) if u]


def _block_urls() -> dict[str, list[str]]:
    try:
        from prefect.context import FlowRunContext
    except ImportError:  # pragma: no cover
        return {}
    if FlowRunContext.get() is None:
        return {}
    from blocks.notifications import NotificationChannels

    try:
        block = NotificationChannels.load(BLOCK_NAME)
    except ValueError:
        return {}
    return {name: [u.get_secret_value() for u in urls] for name, urls in block.channels.items()}


def send(
    urls: Iterable[str],
    title: str,
    body: str,
    warn: Callable[[str], None],
    *,
    notify_type: str = "info",
    timeout: float = NOTIFY_TIMEOUT,
) -> bool:
    """Send to every URL (in one background thread, bounded by `timeout`); True when all
    accepted it. Failures become one warning each; nothing is raised."""
    import apprise

    urls = list(urls)
    results: dict[str, bool] = {}

    def deliver() -> None:
        for url in urls:
            target = apprise.Apprise()
            if not target.add(with_timeouts(url, timeout)):
                results[url] = False
                continue
            results[url] = bool(target.notify(title=title, body=body, notify_type=notify_type))

    worker = threading.Thread(target=deliver, daemon=True, name="opsflow-notify")
    worker.start()
    worker.join(timeout * max(1, len(urls)) + 1)
    for url in urls:
        if results.get(url):
            continue
        reason = "timed out" if url not in results else "was not accepted or is not a valid apprise URL"
        warn(f"notification to {redact(url)} {reason}; the run's result stands")
    return bool(urls) and all(results.get(u) for u in urls)


def notify_channels(
    channels: Iterable[str], title: str, body: str, warn: Callable[[str], None], *, notify_type: str = "info"
) -> list[str]:
    """Send to each named channel; returns the channels that have no URL configured."""
    missing = []
    for channel in channels:
        urls = channel_urls(channel)
        if not urls:
            missing.append(channel)
            continue
        send(urls, title, body, warn, notify_type=notify_type)
    return missing
