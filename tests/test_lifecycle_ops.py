"""The shipped ops files agree with each other and with the settings they are written for.

`ops/photo-api.env.example` is the reference: `photo-api check-config` must accept it, and the systemd
unit, the nginx site and the HAProxy example must fit its values (stop timeout, body size, timeouts,
probe timing). The load balancer configs themselves run for real in tests/e2e/test_lifecycle_rolling.py.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from photo_api.config import Settings, load_settings
from tests.harness.server import clean_environment, console_script

OPS = Path(__file__).resolve().parents[1] / "ops"
ENV_EXAMPLE = OPS / "photo-api.env.example"
# systemd must outlast the drain + graceful stop by this much (workers notice within 1 s, then exit).
STOP_MARGIN_S = 5


@pytest.fixture(scope="module")
def example() -> Settings:
    return load_settings(environ={"PHOTO_API_ENV_FILE": str(ENV_EXAMPLE)})


def _unit(name: str) -> dict[str, dict[str, list[str]]]:
    """A systemd unit file as {section: {key: [values]}} (keys may repeat, e.g. Environment=)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in (OPS / "systemd" / name).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
        else:
            key, _, value = line.partition("=")
            current.setdefault(key, []).append(value)
    return sections


def _seconds(value: str) -> float:
    """An nginx/HAProxy duration: 65s, 500ms, 2m, or plain seconds."""
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)?", value).groups()  # type: ignore[union-attr]
    return float(number) * {"ms": 0.001, "s": 1, "m": 60, None: 1}[unit]


def _directive(text: str, name: str) -> list[str]:
    return re.findall(rf"^\s*{name}\s+([^;\n]+);?\s*$", text, flags=re.MULTILINE)


def test_env_example_passes_check_config() -> None:
    env = clean_environment({"PHOTO_API_ENV_FILE": str(ENV_EXAMPLE)})
    result = subprocess.run(
        [console_script("photo-api"), "check-config"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "configuration is valid" in result.stderr
    assert "CHANGE-ME-DB-PASSWORD" not in result.stdout  # the password is redacted in the printout


def test_env_example_is_production(example: Settings) -> None:
    assert example.is_production
    assert example.storage_backend == "swift"


def test_systemd_unit_stops_after_the_drain(example: Settings) -> None:
    service = _unit("photo-api.service")["Service"]
    assert service["KillMode"] == ["mixed"]  # SIGTERM to the master only
    assert service["KillSignal"] == ["SIGTERM"]
    (stop_timeout,) = service["TimeoutStopSec"]
    linger = example.prometheus_push_linger_seconds if example.prometheus_pushgateway_url else 0
    needed = example.drain_delay_seconds + example.graceful_timeout + STOP_MARGIN_S
    assert float(stop_timeout) >= needed + linger  # the final push lingers before the group is deleted
    assert service["Restart"] == ["on-failure"]
    (exec_start,) = service["ExecStart"]
    assert exec_start.endswith("/photo-api serve")
    assert "PHOTO_API_ENV_FILE=/etc/photo-api/photo-api.env" in service["Environment"]
    for option in ("NoNewPrivileges", "ProtectSystem", "PrivateTmp", "ProtectHome"):
        assert service[option] != ["no"]


def test_reap_uploads_timer_runs_its_service() -> None:
    timer = _unit("photo-api-reap-uploads.timer")
    service = _unit("photo-api-reap-uploads.service")["Service"]
    assert timer["Timer"]["OnCalendar"]
    assert service["Type"] == ["oneshot"]
    (exec_start,) = service["ExecStart"]
    assert exec_start.endswith("/photo-api reap-uploads")


def test_nginx_site_agrees_with_the_settings(example: Settings) -> None:
    text = (OPS / "nginx" / "photo-api.conf").read_text()
    (body_size,) = _directive(text, "client_max_body_size")
    assert body_size == "25m" and example.max_upload_bytes == 25 * 1024 * 1024
    upstream = text[text.index("upstream photo_api") : text.index("}", text.index("upstream photo_api"))]
    (idle,) = _directive(upstream, "keepalive_timeout")
    assert _seconds(idle) < example.keepalive  # nginx closes idle upstream connections before the app does
    assert f":{example.metrics_port}" not in upstream
    (read_timeout,) = _directive(text, "proxy_read_timeout")
    longest = max(example.storage_upload_timeout, example.db_statement_timeout_ms / 1000)
    assert _seconds(read_timeout) > longest
    (retry_on,) = _directive(text, "proxy_next_upstream")
    assert "non_idempotent" not in retry_on and "error" in retry_on
    assert "$request_id" in text and "X-Request-ID" in text


def test_haproxy_probe_timing_fits_the_drain(example: Settings) -> None:
    text = (OPS / "haproxy" / "photo-api.cfg").read_text()
    inter, fall = re.search(r"inter (\S+) fall (\d+)", text).groups()  # type: ignore[union-attr]
    (check_timeout,) = re.findall(r"^\s*timeout check (\S+)$", text, flags=re.MULTILINE)
    assert _seconds(inter) == example.lb_health_check_interval
    assert int(fall) == example.lb_unhealthy_threshold
    assert _seconds(check_timeout) == example.lb_health_check_timeout
    assert example.health_check_timeout < _seconds(check_timeout)
    assert _seconds(inter) * int(fall) + _seconds(check_timeout) <= example.drain_delay_seconds
    assert "uri /health" in text
    (keep_alive,) = re.findall(r"^\s*timeout http-keep-alive (\S+)$", text, flags=re.MULTILINE)
    assert _seconds(keep_alive) < example.keepalive


def test_worker_unit_drains_the_job_in_hand(example: Settings) -> None:
    service = _unit("photo-api-worker.service")["Service"]
    assert service["KillMode"] == ["mixed"]  # SIGTERM to the main process: RQ's warm shutdown
    assert service["KillSignal"] == ["SIGTERM"]
    (stop_timeout,) = service["TimeoutStopSec"]
    assert float(stop_timeout) >= example.job_timeout + STOP_MARGIN_S  # the longest job finishes first
    (exec_start,) = service["ExecStart"]
    assert "/photo-api worker" in exec_start
    assert "PHOTO_API_ENV_FILE=/etc/photo-api/photo-api.env" in service["Environment"]
    # Not the API's metrics directory, which its master locks.
    api_dir = [e for e in _unit("photo-api.service")["Service"]["Environment"] if "PROMETHEUS_MULTIPROC_DIR" in e]
    assert api_dir and api_dir[0] not in service["Environment"]
    assert example.redis_url is not None and example.processing_stale_seconds > example.job_timeout
