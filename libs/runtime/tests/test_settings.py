"""Settings come from the environment; a wrong one stops the process with a single line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from storeplane_runtime.settings import ServiceSettings, SettingsError, load_settings
from storeplane_runtime.testing import test_authority


def test_per_service_defaults_apply_when_the_environment_is_silent(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("GRPC_PORT", "METRICS_PORT", "DATABASE_URL"):
        monkeypatch.delenv(var, raising=False)
    settings = load_settings(ServiceSettings, "stock")
    assert settings.grpc_port == 50052
    assert settings.metrics_port == 9452
    assert settings.resolved_database_url().endswith("stock.db")


def test_environment_wins_over_defaults_and_overrides_win_over_both(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRPC_PORT", "6001")
    monkeypatch.setenv("STOCK_ADDR", "stock.internal:7000")
    assert load_settings(ServiceSettings, "checkout").grpc_port == 6001
    assert load_settings(ServiceSettings, "checkout").stock_addr == "stock.internal:7000"
    assert load_settings(ServiceSettings, "checkout", grpc_port=7001).grpc_port == 7001


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("GRPC_PORT", "fifty", "GRPC_PORT"),
        ("GRPC_PORT", "70000", "GRPC_PORT"),
        ("STOCK_ADDR", "nohost", "STOCK_ADDR"),
        ("LOG_LEVEL", "LOUD", "LOG_LEVEL"),
        ("SHUTDOWN_GRACE_SECONDS", "-1", "SHUTDOWN_GRACE_SECONDS"),
    ],
)
def test_bad_setting_is_named_in_one_line(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, named: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as caught:
        load_settings(ServiceSettings, "stock")
    message = str(caught.value.code)
    assert "\n" not in message
    assert message.startswith("stock: bad setting: ")
    assert named in message


@pytest.mark.parametrize("process", ["gateway", "checkout", "stock", "customer", "loyalty"])
def test_process_with_a_port_that_is_not_a_number_stops_with_one_line(process: str, tmp_path: object) -> None:
    env = {**os.environ, "GRPC_PORT": "not-a-port"}
    result = subprocess.run(
        [sys.executable, "-m", process], env=env, capture_output=True, text=True, timeout=60, cwd=str(tmp_path)
    )
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{process}: bad setting: GRPC_PORT='not-a-port'")


def test_process_whose_port_is_taken_stops_with_a_clear_message_not_a_traceback(tmp_path: object) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {
            **os.environ,
            "GRPC_PORT": str(port),
            "GRPC_HOST": "127.0.0.1",
            "METRICS_PORT": "0",
            "DATABASE_URL": f"sqlite:///{tmp_path}/c.db",
            "AUTH_JWKS_FILE": test_authority().jwks_file,
        }
        result = subprocess.run(
            [sys.executable, "-m", "customer"], env=env, capture_output=True, text=True, timeout=60, cwd=str(tmp_path)
        )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"customer: cannot listen on 127.0.0.1:{port}" in result.stderr.strip().splitlines()[-1]


def test_process_without_its_signing_keys_stops_with_one_line(tmp_path: object) -> None:
    env = {**os.environ, "GRPC_PORT": "0", "METRICS_PORT": "0", "DATABASE_URL": f"sqlite:///{tmp_path}/c.db"}
    env.pop("AUTH_JWKS_FILE", None)
    env.pop("AUTH_JWKS_URL", None)
    result = subprocess.run(
        [sys.executable, "-m", "customer"], env=env, capture_output=True, text=True, timeout=60, cwd=str(tmp_path)
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("customer: cannot read AUTH_JWKS_FILE var/auth/jwks.json")
