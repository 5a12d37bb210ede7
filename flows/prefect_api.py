"""Commands that talk to a Prefect server: find it, and turn its failures into opsflow errors.

`need_server` points this process at the API the way every opsflow command does
(PREFECT_API_URL, else the local server; never a temporary one, which would hold no
deployments or paused runs); `api_errors` turns transport failures, timeouts and HTTP errors
into the one-line errors and exit codes of flows/errors.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from flows.errors import ConnectionFailure, PermissionFailure, ValidationError

CONNECT_SECONDS = 10.0  # bounds a first request: Prefect's client retries timeouts for minutes


def need_server(console, verbose: bool, quiet: bool, what: str = "a deployment run") -> str:
    """The URL of a Prefect server that keeps running, else exit 4 (3 if OPSFLOW_SERVER=ephemeral)."""
    from flows.batch import _configure_prefect_logging
    from flows.local_server import ensure_api, local_api_url
    from flows.settings import get_settings

    settings = get_settings()
    url = ensure_api(settings.server, settings.server_port, console.info)
    if url is None:
        if settings.server == "ephemeral":
            raise ValidationError(f"{what} needs a Prefect server, not OPSFLOW_SERVER=ephemeral")
        raise ConnectionFailure(f"no PREFECT_API_URL, no server at {local_api_url(settings.server_port)}")
    _configure_prefect_logging(verbose=verbose, quiet=quiet)
    return url


@contextlib.contextmanager
def api_errors(api: str, where: Callable[[], str | None] = lambda: None) -> Iterator[None]:
    """Prefect client errors as opsflow's: 4 unreachable, silent or 5xx; 5 refused; 3 a bad request."""
    import httpx
    from prefect.exceptions import PrefectHTTPStatusError

    try:
        yield
    except TimeoutError:
        raise ConnectionFailure(f"no answer from the Prefect API at {api} in {CONNECT_SECONDS:g}s") from None
    except httpx.TransportError as exc:
        raise ConnectionFailure(f"cannot reach the Prefect API at {api}: {exc}", where=where()) from None
    except PrefectHTTPStatusError as exc:
        status, detail = exc.response.status_code, exc.response.text
        with contextlib.suppress(ValueError):
            detail = exc.response.json().get("detail") or detail
        kind = ConnectionFailure if status >= 500 else ValidationError
        kind = PermissionFailure if status in (401, 403) else kind
        raise kind(f"the Prefect API answered {status}: {detail}") from None
