"""The request metrics: Flask hooks that record `photo_api_http_requests_total`, `..._duration_seconds` and
`..._in_flight` for every request of the app.

Why hand-written hooks and not prometheus-flask-exporter's (0.23.2, measured against this app; also
docs/operations.md, "Metrics"):

* its defaults (`export_defaults`, even with `group_by="url_rule"` and `defaults_prefix`) are named
  `<prefix>_http_request_total{method,status}`: singular, and no endpoint label at all; the histogram
  carries an extra `status` label and the label `url_rule`, which is `"None"` when no route matched; the
  method is the raw one (a client's `BREW` becomes a series); and it adds `<prefix>_exporter_info` and
  `<prefix>_http_request_exceptions_total`;
* `register_default(counter, histogram, gauge)` gives our names and label functions, but it wraps the
  view functions registered at that moment: a request that matches no route (our `unmatched` 404 and
  405) runs no view and is never counted, nor is a route added later; the before/after-request hooks
  (authentication, request id, access log) are outside its timing; and its wrapper catches `Exception`
  only, so a gevent.Timeout or GreenletExit leaves the in-flight gauge raised for the life of the worker;
* a second app in one process (every test builds one) makes it register its metrics again, which
  prometheus_client refuses ("Duplicated timeseries").

The exporter does serve what it is good at in the gunicorn master (master.py): the aggregate over the
workers' files on METRICS_PORT and the dead-worker bookkeeping. Labels here are like its
`group_by="url_rule"`: the route template, never the raw path. This is the one module outside `api/` that
reads Flask's `request`: it is a Flask extension, like the exporter it stands in for.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .catalogue import HTTP_METHODS, OTHER, UNMATCHED_ENDPOINT
from .recording import enable

if TYPE_CHECKING:
    from flask import Flask, Response

    from ..config import Settings


def init_app(app: Flask, settings: Settings) -> None:
    """Record request metrics for `app`; nothing at all when METRICS_ENABLED is off.

    Call before the blueprints' own hooks are registered: Flask runs `before_request` functions in order
    and `after_request`/`teardown_request` ones in reverse, so these hooks time the whole request.
    """
    # Imported here: the gunicorn master imports this package before gevent patches the workers.
    from flask import g, request

    if not settings.metrics_enabled:
        return
    cat = enable(settings)

    def record(status: int, started: float) -> None:
        method = request.method if request.method in HTTP_METHODS else OTHER
        rule = request.url_rule
        endpoint = rule.rule if rule is not None else UNMATCHED_ENDPOINT
        cat.http_requests.labels(method, endpoint, str(status)).inc()
        cat.http_duration.labels(method, endpoint).observe(time.perf_counter() - started)

    def started() -> None:
        g.metrics_started = time.perf_counter()
        g.metrics_in_flight = True
        cat.http_in_flight.inc()

    def answered(response: Response) -> Response:
        began = g.pop("metrics_started", None)
        if began is not None:
            record(response.status_code, began)
        return response

    def finished(_exc: BaseException | None = None) -> None:
        began = g.pop("metrics_started", None)
        if began is not None:  # no after_request ran: an exception escaped every error handler
            record(500, began)
        if g.pop("metrics_in_flight", False):
            cat.http_in_flight.dec()

    app.before_request(started)
    app.after_request(answered)
    app.teardown_request(finished)
