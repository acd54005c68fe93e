"""An MLflow tracking server that drops away for a while does not fail a study.

A tracking server that restarts or drops off the network for a while must not fail a
study that has run for hours. Every MLflow call of the driver goes through call():
while the server cannot be reached it waits and tries again every RETRY_EVERY_S, for
up to THEMETUNE_MLFLOW_OUTAGE_S seconds (default 15 min) per outage. The driver (and
with it Tune's event loop) waits; trials pause at their next report, so nothing is
lost. MLflow's own retries back off exponentially up to 2 min apart (~4 min in all
with its defaults): shortened here, unless set by the user, so that the driver goes
on within seconds of the server's return.

The web imports this module (through tracking.registry) on every page: MLflow, which
takes seconds to import, is imported only by the functions that call it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time

import requests

from tuning.errors import ThemetuneError, TrackingLostError, TrackingUnreachableError
from tuning.redact import redact_text
from tuning.tracking import output

log = output.log

OUTAGE_ENV = "THEMETUNE_MLFLOW_OUTAGE_S"
DEFAULT_OUTAGE_S = 900.0
RETRY_EVERY_S = 2.0
MLFLOW_RETRY_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                          "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
# A command that only reads (predict.py) has no outage to wait out: a server that
# answered the health check and then stops answering is given up on within a minute.
READ_RETRY_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
                       "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                       "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
# The health check's connect and read timeouts: a server that is there answers at once.
HEALTH_TIMEOUT_S = (5, 5)


def outage_budget_s() -> float:
    raw = os.environ.get(OUTAGE_ENV)
    try:
        return float(raw) if raw else DEFAULT_OUTAGE_S
    except ValueError:
        raise ThemetuneError(f"{OUTAGE_ENV} must be a number of seconds (got {raw!r}).",
                             key=OUTAGE_ENV, fix="set it to e.g. 900, or unset it.") from None


def _unreachable(exc: BaseException) -> bool:
    """True when the server could not be reached (refused, timed out, gave 5xx after
    retries) rather than refusing the request itself."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                             requests.exceptions.RetryError)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class Outages:
    """How this process waits out an unreachable tracking server.

    One per driver process (OUTAGES): the study, its callback and its model logger
    share what it knows. `gave_up` is set once an outage outlasted its budget, so that
    later calls (closing runs on the way out) try once instead of waiting out another
    budget each; `try_once` is set while a stopped study closes its runs, so that a user
    who pressed Ctrl-C does not wait out an outage for it (the runs stay RUNNING, as
    --resume expects them).
    """

    def __init__(self) -> None:
        self.gave_up: TrackingLostError | None = None
        self.try_once = False

    @contextlib.contextmanager
    def without_waiting(self):
        """Calls inside try once and raise TrackingLostError at once if the server is away."""
        previous, self.try_once = self.try_once, True
        try:
            yield
        finally:
            self.try_once = previous

    def call(self, fn, *args, **kwargs):
        """fn(*args, **kwargs), waiting out an unreachable tracking server."""
        from mlflow.exceptions import MlflowException

        deadline = None
        while True:
            try:
                result = fn(*args, **kwargs)
            except (MlflowException, requests.exceptions.RequestException) as exc:
                if not _unreachable(exc):
                    raise
                now = time.monotonic()
                if deadline is None:
                    budget = 0.0 if self.gave_up is not None or self.try_once \
                        else outage_budget_s()
                    deadline = now + budget
                    if budget:
                        log.warning("MLflow tracking server unreachable (%s); the study "
                                    "waits for it, up to %.0f s (%s).",
                                    _first_line(exc), budget, OUTAGE_ENV)
                if now >= deadline:
                    self.gave_up = TrackingLostError(
                        f"the MLflow tracking server stayed unreachable for more than "
                        f"{outage_budget_s():.0f} s ({_first_line(exc)}); "
                        f"the study stopped.", key=OUTAGE_ENV,
                        fix="once the server answers again, continue the study with the "
                            "--resume command printed above (raise the budget for longer "
                            "outages).")
                    raise self.gave_up from exc
                time.sleep(RETRY_EVERY_S)
            else:
                if deadline is not None:
                    log.warning("MLflow tracking server answers again; the study goes on.")
                self.gave_up = None
                return result


OUTAGES = Outages()


def call(fn, *args, **kwargs):
    """fn(*args, **kwargs) through this process's OUTAGES."""
    return OUTAGES.call(fn, *args, **kwargs)


def without_waiting():
    return OUTAGES.without_waiting()


def outage_error() -> TrackingLostError | None:
    """The error of an outage that outlasted its budget, while the server stays away."""
    return OUTAGES.gave_up


class RetryingClient:
    """An MlflowClient whose every method goes through `outages.call`."""

    def __init__(self, client, outages: Outages = OUTAGES):
        self._client = client
        self._outages = outages

    def __getattr__(self, name: str):
        # Private and dunder names are not forwarded: unpickling looks some up before
        # _client exists, which would recurse.
        if name.startswith("_"):
            raise AttributeError(name)
        attr = getattr(self._client, name)
        return functools.partial(self._outages.call, attr) if callable(attr) else attr


def client() -> RetryingClient:
    """A retrying client for the process's tracking URI (the one a study set)."""
    from mlflow.tracking import MlflowClient

    return RetryingClient(MlflowClient())


def bound_retries_for_reading() -> None:
    """MLflow's HTTP retries as a reading command wants them, unless the user set them.
    For a process of its own only: a study started from it would inherit them."""
    for name, value in READ_RETRY_DEFAULTS.items():
        os.environ.setdefault(name, value)


def check_reachable(tracking_uri: str) -> None:
    """At start, an unreachable server is a setup mistake: say so at once, instead of
    waiting out an outage that is not one."""
    if not tracking_uri.startswith(("http://", "https://")):
        return
    url = tracking_uri.rstrip("/") + "/health"
    # TLS as MLflow's own client does it; any HTTP answer (even 401 or 404 behind a
    # proxy) means a server is there: only a connection that fails is refused here.
    insecure = os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true"
    verify = os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or not insecure
    try:
        requests.get(url, timeout=HEALTH_TIMEOUT_S, verify=verify)
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
        reason = (f"no answer within {HEALTH_TIMEOUT_S[0]} s"
                  if isinstance(exc, requests.exceptions.Timeout) else _connect_failure(exc))
        raise TrackingUnreachableError(
            f"MLflow tracking server {redact_text(tracking_uri)} does not answer ({reason}).",
            key="MLFLOW_TRACKING_URI",
            fix="start the server (`mlflow server ...`) or point MLFLOW_TRACKING_URI / "
                "mlflow.tracking_uri in config.yaml at a running one.") from None


def _connect_failure(exc: BaseException) -> str:
    """The root cause of a failed connection, without urllib3's nesting of reprs."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror.lower()
        seen = seen.__cause__ or seen.__context__ or next(
            (a for a in getattr(seen, "args", ()) if isinstance(a, BaseException)), None)
    text = str(exc)
    for known in ("Connection refused", "Name or service not known", "No route to host",
                  "Temporary failure in name resolution", "Network is unreachable"):
        if known in text:
            return known.lower()
    return "cannot connect"


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
