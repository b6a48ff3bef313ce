"""The PrometheusRule's groups, checked by `promtool check rules` and unit-tested by `promtool test rules`: for each
alert, input series that make it fire (with its exact labels and annotations) and series that keep it quiet."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

COMPONENT_RULES = Path(__file__).resolve().parents[2] / "k8s" / "components" / "monitoring" / "prometheusrule.yaml"
CHECKOUT = 'process="checkout",grpc_service="pos.checkout.v1.CheckoutService"'


def write_rules(directory: Path) -> Path:
    """The `spec` of the committed PrometheusRule as a plain Prometheus rules file."""
    rule = yaml.safe_load(COMPONENT_RULES.read_text())
    path = directory / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    return path


def test_promtool_checks_the_rules(promtool: str, tmp_path: Path) -> None:
    rules = write_rules(tmp_path)
    proc = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


@dataclass
class Case:
    """Series fed for `minutes`, and the alerts `alert` expected firing at `at` (labels; `value` renders $value)."""

    name: str
    alert: str
    series: dict[str, str]
    at: str
    firing: list[dict[str, str]] = field(default_factory=list)
    value: str = ""


def _series(**per_series: str) -> dict[str, str]:
    return per_series


def _calls(method: str, ok_per_min: int, errors: dict[str, int], minutes: int = 90) -> dict[str, str]:
    series = {
        f'storeplane_rpc_handled_total{{{CHECKOUT},grpc_method="{method}",grpc_code="OK"}}': f"0+{ok_per_min}x{minutes}"
    }
    for code, per_min in errors.items():
        series[f'storeplane_rpc_handled_total{{{CHECKOUT},grpc_method="{method}",grpc_code="{code}"}}'] = (
            f"0+{per_min}x{minutes}"
        )
    return series


def _scans(fast_per_min: int, medium_per_min: int, minutes: int = 90, *, near_per_min: int = 0) -> dict[str, str]:
    """Scans per minute: fast (under 100 ms), near the threshold (250-300 ms) and medium (300-500 ms)."""
    total = fast_per_min + near_per_min + medium_per_min
    base = f'storeplane_rpc_duration_seconds_bucket{{{CHECKOUT},grpc_method="ScanItem"'
    return {
        f'{base},le="0.1"}}': f"0+{fast_per_min}x{minutes}",
        f'{base},le="0.25"}}': f"0+{fast_per_min}x{minutes}",
        f'{base},le="0.3"}}': f"0+{fast_per_min + near_per_min}x{minutes}",
        f'{base},le="0.5"}}': f"0+{total}x{minutes}",
        f'{base},le="+Inf"}}': f"0+{total}x{minutes}",
        f'storeplane_rpc_duration_seconds_count{{{CHECKOUT},grpc_method="ScanItem"}}': f"0+{total}x{minutes}",
    }


def _burn(slo: str, burn: str, window: str, severity: str) -> dict[str, str]:
    return {"severity": severity, "slo": slo, "burn": burn, "window": window}


CASES = [
    # 10 % of CompleteSale calls fail (UNAVAILABLE): after 10 minutes only the fastest burn (14.4x, 1 h and 5 min,
    # for 2 min) fires; the slower ones are still pending.
    Case(
        "availability burns",
        "StoreplaneCompleteSaleAvailabilityBurn",
        _calls("CompleteSale", 90, {"UNAVAILABLE": 10}),
        "10m",
        [_burn("complete_sale_availability", "14.4", "1h", "page")],
    ),
    # ... and after 80 minutes the 6x burn too (the 3x one waits its hour).
    Case(
        "availability burns for long",
        "StoreplaneCompleteSaleAvailabilityBurn",
        _calls("CompleteSale", 90, {"UNAVAILABLE": 10}),
        "40m",
        [
            _burn("complete_sale_availability", "14.4", "1h", "page"),
            _burn("complete_sale_availability", "6", "6h", "page"),
        ],
    ),
    # refusals the till caused are no availability error, and 0.05 % of failures is within budget
    Case(
        "availability quiet",
        "StoreplaneCompleteSaleAvailabilityBurn",
        _calls("CompleteSale", 1999, {"FAILED_PRECONDITION": 500, "INTERNAL": 1}),
        "80m",
    ),
    # half of the scans over 300 ms
    Case(
        "latency burns",
        "StoreplaneScanItemLatencyBurn",
        _scans(50, 50),
        "10m",
        [_burn("scan_item_latency", "14.4", "1h", "page")],
    ),
    Case("latency quiet", "StoreplaneScanItemLatencyBurn", _scans(100, 0), "80m"),
    # scans of 250-300 ms are within the SLO: 300 ms is a bucket bound, nothing is interpolated
    Case("latency quiet under 300 ms", "StoreplaneScanItemLatencyBurn", _scans(50, 0, near_per_min=50), "80m"),
    Case(
        "outbox stale",
        "StoreplaneOutboxStale",
        {'storeplane_outbox_oldest_age_seconds{process="stock",service="stock"}': "600x20"},
        "10m",
        [{"severity": "page", "process": "stock", "service": "stock"}],
        "10m 0s",
    ),
    Case(
        "outbox fresh",
        "StoreplaneOutboxStale",
        {'storeplane_outbox_oldest_age_seconds{process="stock",service="stock"}': "1 30 5 60 2x20"},
        "10m",
    ),
    Case(
        "parked",
        "StoreplaneEventsParked",
        {
            'storeplane_events_parked_current{process="loyalty",consumer="loyalty",place="broker"}': "2x20",
            'storeplane_events_parked_current{process="loyalty",consumer="loyalty",place="database"}': "0x20",
        },
        "10m",
        [{"severity": "ticket", "consumer": "loyalty"}],
        "2",
    ),
    Case(
        "nothing parked",
        "StoreplaneEventsParked",
        {'storeplane_events_parked_current{process="loyalty",consumer="loyalty",place="broker"}': "0x20"},
        "10m",
    ),
    Case(
        "consumer lag",
        "StoreplaneConsumerLag",
        {
            'storeplane_queue_messages{process="stock",queue="stock.events"}': "5000x30",
            'storeplane_queue_messages{process="stock",queue="stock.events.parked"}': "5000x30",
        },
        "15m",
        [{"severity": "page", "queue": "stock.events"}],
        "5000",
    ),
    Case(
        "no lag",
        "StoreplaneConsumerLag",
        {
            'storeplane_queue_messages{process="stock",queue="stock.events"}': "20x30",
            'storeplane_queue_messages{process="stock",queue="stock.events.retry.1000ms"}': "5000x30",
        },
        "15m",
    ),
    Case(
        "error ratio",
        "StoreplaneErrorRatioHigh",
        {
            'storeplane_rpc_handled_total{process="stock",grpc_method="Reserve",grpc_code="OK"}': "0+90x40",
            'storeplane_rpc_handled_total{process="stock",grpc_method="Reserve",grpc_code="INTERNAL"}': "0+10x40",
        },
        "20m",
        [{"severity": "page", "process": "stock"}],
        "10%",
    ),
    Case(
        "client errors are no error ratio",
        "StoreplaneErrorRatioHigh",
        {
            'storeplane_rpc_handled_total{process="stock",grpc_method="Reserve",grpc_code="OK"}': "0+50x40",
            'storeplane_rpc_handled_total{process="stock",grpc_method="Reserve",grpc_code="NOT_FOUND"}': "0+50x40",
        },
        "20m",
    ),
    Case(
        "pool exhausted",
        "StoreplaneDatabasePoolExhausted",
        {'storeplane_db_pool_waiting{process="checkout",service="checkout"}': "3x20"},
        "10m",
        [{"severity": "ticket", "process": "checkout", "service": "checkout"}],
    ),
    Case(
        "pool fine",
        "StoreplaneDatabasePoolExhausted",
        {'storeplane_db_pool_waiting{process="checkout",service="checkout"}': "0 1 0 2 0x20"},
        "10m",
    ),
    Case(
        "restarting",
        "StoreplanePodRestarting",
        {'process_start_time_seconds{process="checkout",pod="checkout-7d9f"}': "100 100 160 160 220 280x10"},
        "6m",
        [{"severity": "page", "process": "checkout", "pod": "checkout-7d9f"}],
        "3",
    ),
    Case(
        "started once",
        "StoreplanePodRestarting",
        {'process_start_time_seconds{process="checkout",pod="checkout-7d9f"}': "100 100 160x10"},
        "6m",
    ),
    # The gateway is Envoy: no process_start_time_seconds, its uptime (seconds, scraped each minute) drops instead.
    Case(
        "envoy restarted three times",
        "StoreplanePodRestarting",
        {'envoy_server_uptime{process="gateway",pod="gateway-5c8b"}': "600 660 5 65 5 65 5 65+60x10"},
        "8m",
        [{"severity": "page", "process": "gateway", "pod": "gateway-5c8b"}],
        "3",
    ),
    Case(
        "envoy up all along",
        "StoreplanePodRestarting",
        {'envoy_server_uptime{process="gateway",pod="gateway-5c8b"}': "600+60x40"},
        "30m",
    ),
]


def _render(template: str, labels: dict[str, str], value: str) -> str:
    text = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], template)
    return re.sub(r"\{\{ \$value[^}]*\}\}", value, text)


def _rules_by_alert(rules_file: Path) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for group in yaml.safe_load(rules_file.read_text())["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                found.setdefault(rule["alert"], []).append(rule)
    return found


def _expected(case: Case, rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for labels in case.firing:
        # the rule this firing instance comes from: the one whose own labels it carries
        [rule] = [r for r in rules if all(labels.get(k) == v for k, v in r["labels"].items())]
        out.append(
            {
                "exp_labels": labels,
                "exp_annotations": {k: _render(v, labels, case.value) for k, v in rule["annotations"].items()},
            }
        )
    return out


def test_every_alert_is_tested_firing_and_quiet(monitoring: ModuleType, tmp_path: Path) -> None:
    alerts = set(_rules_by_alert(write_rules(tmp_path)))
    assert {c.alert for c in CASES if c.firing} == alerts
    assert {c.alert for c in CASES if not c.firing} == alerts


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_promtool_unit_test(promtool: str, tmp_path: Path, case: Case) -> None:
    rules_file = write_rules(tmp_path)
    rules = _rules_by_alert(rules_file)[case.alert]
    test = {
        "rule_files": [rules_file.name],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in case.series.items()],
                "alert_rule_test": [
                    {"eval_time": case.at, "alertname": case.alert, "exp_alerts": _expected(case, rules)}
                ],
            }
        ],
    }
    path = tmp_path / "test.yaml"
    path.write_text(yaml.safe_dump(test, sort_keys=False))
    proc = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_unit_tests_notice_a_wrong_expectation(promtool: str, tmp_path: Path) -> None:
    """Guard against unit tests that pass whatever happens: a quiet case expected to fire fails."""
    quiet = next(c for c in CASES if c.name == "outbox fresh")
    wrong = Case(
        quiet.name,
        quiet.alert,
        quiet.series,
        quiet.at,
        [{"severity": "page", "process": "stock", "service": "stock"}],
        "1m 0s",
    )
    with pytest.raises(AssertionError, match="FAILED"):
        test_promtool_unit_test(promtool, tmp_path, wrong)
