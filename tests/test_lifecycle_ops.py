"""The shipped ops files agree with each other and with the settings they are written for.

`ops/photo-api.env.example` is the reference: `photo-api check-config` names each of its CHANGE-ME
placeholders and accepts it once they are replaced (production refuses every secret it ships), and the systemd
unit, the nginx site and the HAProxy example must fit its values (stop timeout, body size, timeouts,
probe timing). The load balancer configs themselves run for real in tests/e2e/test_lifecycle_rolling.py.
"""

from __future__ import annotations

import re
import secrets
import subprocess
from pathlib import Path

import pytest

from photo_api.config import ConfigError, Settings, load_settings
from photo_api.config.settings import SECRET_FIELDS
from tests.harness.server import run_command

OPS = Path(__file__).resolve().parents[1] / "ops"
ENV_EXAMPLE = OPS / "photo-api.env.example"
# systemd must outlast the drain + graceful stop by this much (workers notice within 1 s, then exit).
STOP_MARGIN_S = 5
# What an operator writes in place of each CHANGE-ME placeholder of the example's active lines.
FILLED_IN = {
    "PUBLIC_BASE_URL": "https://photos.example.com",
    "DATABASE_URL": "postgresql://photo_api:Db-pass-8u2Kq7@db.internal:5432/photo_api",
    "JWT_SECRET_KEY": secrets.token_urlsafe(48),
    "NHN_STORAGE_TENANT_ID": "0a1b2c3d4e5f60718293a4b5c6d7e8f9",
    "NHN_STORAGE_IAM_USER": "photo-api@example.com",
    "NHN_STORAGE_IAM_PASSWORD": "Iam-pass-3vN7tQ",
    "NHN_STORAGE_TEMP_URL_KEY": secrets.token_urlsafe(48),
}
SECRET_FIELDS_FILLED_IN = ("JWT_SECRET_KEY", "NHN_STORAGE_IAM_PASSWORD", "NHN_STORAGE_TEMP_URL_KEY")
# ...and of its commented-out optional ones (CDN, Log & Crash), filled in together.
OPTIONAL_FILLED_IN = {
    "NHN_CDN_DOMAIN": "abcd.cdn.nhncloudservice.com",
    "NHN_CDN_APP_KEY": "cdn-app-key-Zr41",
    "NHN_CDN_SECRET_KEY": "cdn-secret-key-Hq08",
    "NHN_CDN_ENCRYPT_KEY": "00112233445566778899aabbccddeeff",
    "NHN_LOG_APPKEY": "log-appkey-Wd62",
    "NHN_LOG_URL": "https://api-logncrash.nhncloudservice.com/v2/log",
}


def example_lines() -> dict[str, str]:
    """Every `NAME=value` of the example, the commented-out optional ones included."""
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = re.fullmatch(r"#? ?([A-Z][A-Z0-9_]*)=(.*)", line.strip())
        if match and match[1].lower() in Settings.model_fields:
            values[match[1]] = match[2]
    return values


@pytest.fixture(scope="module")
def example() -> Settings:
    return load_settings(environ={"PHOTO_API_ENV_FILE": str(ENV_EXAMPLE), **FILLED_IN})


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


def check_config(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`photo-api check-config` in a clean environment plus `env`."""
    return run_command("photo-api", "check-config", env=env, cwd=cwd)


def test_env_example_as_shipped_is_refused_naming_each_placeholder(tmp_path: Path) -> None:
    result = check_config({"PHOTO_API_ENV_FILE": str(ENV_EXAMPLE)}, tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    problems = [line.strip()[2:] for line in result.stderr.splitlines() if line.startswith("  - ")]
    assert {p.split(":", 1)[0] for p in problems} == set(FILLED_IN), result.stderr
    assert all("placeholder" in p for p in problems), result.stderr


def test_env_example_passes_check_config_once_the_placeholders_are_replaced(tmp_path: Path) -> None:
    result = check_config({"PHOTO_API_ENV_FILE": str(ENV_EXAMPLE), **FILLED_IN}, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "configuration is valid" in result.stderr
    for secret in ("Db-pass-8u2Kq7", *(FILLED_IN[n] for n in SECRET_FIELDS_FILLED_IN)):
        assert secret not in result.stdout  # redacted in the printout
    # The optional sections are usable the same way once uncommented and filled in.
    result = check_config({"PHOTO_API_ENV_FILE": str(ENV_EXAMPLE), **FILLED_IN, **OPTIONAL_FILLED_IN}, tmp_path)
    assert result.returncode == 0, result.stderr


def test_every_secret_in_the_env_example_is_refused_in_production() -> None:
    lines = example_lines()
    secret_like = {name for name in lines if name.lower() in SECRET_FIELDS} | {"DATABASE_URL"}
    # Guard: the test must look at every secret the example has a line for, not at an empty set.
    assert secret_like == {
        "DATABASE_URL",
        "JWT_SECRET_KEY",
        "NHN_STORAGE_IAM_PASSWORD",
        "NHN_STORAGE_TEMP_URL_KEY",
        "NHN_CDN_SECRET_KEY",
        "NHN_CDN_ENCRYPT_KEY",
        "NHN_LOG_APPKEY",
    }
    valid = {"PHOTO_API_ENV_FILE": str(ENV_EXAMPLE), **FILLED_IN, **OPTIONAL_FILLED_IN}
    assert load_settings(environ=valid).is_production  # so each refusal below is the shipped value's alone
    for name in sorted(secret_like):
        with pytest.raises(ConfigError) as info:
            load_settings(environ={**valid, name: lines[name]})
        assert name in info.value.settings_named(), name
        assert "placeholder" in str(info.value), info.value


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


def test_proxy_access_log_formats_leave_out_credentials() -> None:
    # The run-for-real check is tests/e2e/test_proxy_logs.py; this one keeps a later edit from putting a
    # variable that carries a token or a signature back into a format.
    site = (OPS / "nginx" / "photo-api.conf").read_text()
    (log_format,) = re.findall(r"^log_format photo_api .*?;$", site, flags=re.MULTILINE | re.DOTALL)
    assert not re.findall(r"\$(request|request_uri|args|arg_\w+|query_string|is_args|http_referer)\b", log_format)
    assert "$photo_api_log_path" in log_format and "$photo_api_request_id" in log_format
    assert _directive(site, "access_log") == ["/var/log/nginx/photo-api.access.log photo_api"]
    haproxy = (OPS / "haproxy" / "photo-api.cfg").read_text()
    assert not re.search(r"^\s*option\s+httplog", haproxy, flags=re.MULTILINE)
    (log_format,) = re.findall(r"^\s*log-format (.*)$", haproxy, flags=re.MULTILINE)
    assert not re.findall(r"%(\{[^}]*\})?(r|HU|HQ)\b", log_format)
    assert "var(txn.log_request)" in log_format


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
