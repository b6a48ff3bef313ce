"""The one source of the monitoring objects: recording rules, alerts (two SLOs with multi-window multi-burn-rate
alerts, and the operational ones), the PodMonitor and the Grafana dashboard. The dashboard's panels query the same
expressions the rules define (by the recorded name, or by the same text), so the two cannot drift apart.

    uv run python k8s/components/monitoring/generate.py        # rewrites prometheusrule.yaml, podmonitor.yaml,
                                                                # dashboards/storeplane.json beside this file

tests/observability checks the committed files equal what this writes, runs promtool over the rules and queries
every expression against a real Prometheus scraping the running processes.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
NAMESPACE = "storeplane"
PROCESSES = ("gateway", "checkout", "stock", "customer", "loyalty")
METRICS_PORTS = {"gateway": 9450, "checkout": 9451, "stock": 9452, "customer": 9453, "loyalty": 9454}  # conventions
RUNBOOKS = "https://github.com/storeplane/storeplane/blob/main/docs/runbooks.md"

# gRPC codes that are the service's fault (an availability error); the caller's mistakes (INVALID_ARGUMENT,
# NOT_FOUND, FAILED_PRECONDITION, PERMISSION_DENIED...) and cancellations are not.
SERVER_ERRORS = "UNKNOWN|INTERNAL|UNAVAILABLE|DEADLINE_EXCEEDED|DATA_LOSS|UNIMPLEMENTED"
HANDLED = "storeplane_rpc_handled_total"
DURATION = "storeplane_rpc_duration_seconds"
# The gateway is Envoy: its Prometheus stats (no grpc_stats filter, so HTTP status classes, not gRPC codes; a gRPC
# error is an HTTP 200). The edge's own listener is the connection manager "edge"; the backends are the clusters
# named after their services (pos_stock_v1_StockService...). Envoy's latencies are in milliseconds.
EDGE = 'process="gateway",envoy_http_conn_manager_prefix="edge"'
EDGE_BACKENDS = 'process="gateway",envoy_cluster_name=~"pos_.+"'
EDGE_UPTIME = 'envoy_server_uptime{process="gateway"}'


# --- SLOs -------------------------------------------------------------------------------------------------------

# (long window, short window, burn rate, for, severity): the SRE workbook's multi-window multi-burn-rate table.
BURN_WINDOWS = (
    ("1h", "5m", 14.4, "2m", "page"),
    ("6h", "30m", 6.0, "15m", "page"),
    ("1d", "2h", 3.0, "1h", "ticket"),
    ("3d", "6h", 1.0, "3h", "ticket"),
)


def _seconds(window: str) -> int:
    return int(window[:-1]) * {"m": 60, "h": 3600, "d": 86400}[window[-1]]


WINDOWS = sorted({w for long, short, *_ in BURN_WINDOWS for w in (long, short)}, key=_seconds)


@dataclass(frozen=True)
class Slo:
    name: str  # recorded as storeplane:slo_<name>_errors:ratio_rate<window>
    alert: str
    objective: float  # e.g. 0.999
    summary: str
    runbook: str

    @property
    def budget(self) -> float:
        return round(1 - self.objective, 6)

    def recorded(self, window: str) -> str:
        return f"storeplane:slo_{self.name}_errors:ratio_rate{window}"


def _zero_filled(by: str, selector: str, window: str) -> str:
    """The rate of server errors among the calls `selector` selects, summed `by`; 0 (not nothing) while there were
    calls and no error, so ratios and panels show 0 % rather than no data."""
    errors = f'sum{by}(rate({HANDLED}{{{selector}grpc_code=~"{SERVER_ERRORS}"}}[{window}]))'
    matchers = f"{{{selector.rstrip(',')}}}" if selector else ""
    return f"({errors} or sum{by}(rate({HANDLED}{matchers}[{window}])) * 0)"


def _complete_sale_errors(window: str) -> str:
    selector = 'process="checkout",grpc_method="CompleteSale",'
    total = f"sum(rate({HANDLED}{{{selector.rstrip(',')}}}[{window}]))"
    return f"{_zero_filled('', selector, window)} / {total}"


# 300 ms is a bucket bound of the RPC latency histogram (storeplane_runtime.telemetry.RPC_LATENCY): the ratio of scans
# over it is counted exactly ("p99 <= 300 ms" and "at most 1 % of calls over 300 ms" are the same statement).
_SCAN = 'process="checkout",grpc_method="ScanItem"'


def _scan_slow(window: str) -> str:
    under = f'sum(rate({DURATION}_bucket{{{_SCAN},le="0.3"}}[{window}]))'
    total = f"sum(rate({DURATION}_count{{{_SCAN}}}[{window}]))"
    return f"1 - {under} / {total}"


SLOS = (
    Slo(
        "complete_sale_availability",
        "StoreplaneCompleteSaleAvailabilityBurn",
        0.999,
        "CompleteSale is failing: the 99.9 % availability budget burns {{ $labels.burn }}x too fast",
        "completesale-availability",
    ),
    Slo(
        "scan_item_latency",
        "StoreplaneScanItemLatencyBurn",
        0.99,
        "ScanItem is slow: more than 1 % of scans over 300 ms, the budget burns {{ $labels.burn }}x too fast",
        "scanitem-latency",
    ),
)
SLO_RATIOS = {"complete_sale_availability": _complete_sale_errors, "scan_item_latency": _scan_slow}


# --- named expressions: defined once, used by the rules and the dashboard ----------------------------------------

RECORDED: dict[str, str] = {
    "storeplane:rpc_requests:rate5m": f"sum by (process, grpc_service, grpc_method) (rate({HANDLED}[5m]))",
    "storeplane:rpc_errors:rate5m": _zero_filled(" by (process, grpc_service, grpc_method) ", "", "5m"),
    "storeplane:rpc_error_ratio:rate5m": (
        f"{_zero_filled(' by (process) ', '', '5m')} / sum by (process) (rate({HANDLED}[5m]))"
    ),
    "storeplane:rpc_duration_seconds:p99_5m": (
        f"histogram_quantile(0.99, sum by (process, grpc_method, le) (rate({DURATION}_bucket[5m])))"
    ),
    "storeplane:process_rpc_duration_seconds:p99_5m": (
        f"histogram_quantile(0.99, sum by (process, le) (rate({DURATION}_bucket[5m])))"
    ),
    "storeplane:event_lag_seconds:p99_5m": (
        "histogram_quantile(0.99, sum by (consumer, le) (rate(storeplane_event_lag_seconds_bucket[5m])))"
    ),
}
for _slo in SLOS:
    for _w in WINDOWS:
        RECORDED[_slo.recorded(_w)] = SLO_RATIOS[_slo.name](_w)


@dataclass(frozen=True)
class Alert:
    name: str
    signal: str  # what is compared (the dashboard and the scrape test query it on its own)
    condition: str  # e.g. "> 0"
    for_: str
    severity: str
    summary: str
    description: str
    runbook: str  # the anchor of its section in docs/runbooks.md

    @property
    def expr(self) -> str:
        return f"{self.signal} {self.condition}"


ALERTS = (
    Alert(
        "StoreplaneOutboxStale",
        "max by (process, service) (storeplane_outbox_oldest_age_seconds)",
        "> 120",
        "5m",
        "page",
        "{{ $labels.service }}: events wait in the outbox for {{ $value | humanizeDuration }}",
        "The oldest unpublished outbox row of {{ $labels.service }} is older than 2 minutes: its relay is not "
        "publishing (broker unreachable, relay stopped, or a poison row). Other services see its changes late.",
        "outbox-stale",
    ),
    Alert(
        "StoreplaneEventsParked",
        "sum by (consumer) (storeplane_events_parked_current)",
        "> 0",
        "5m",
        "ticket",
        "{{ $labels.consumer }}: {{ $value }} events parked",
        "Events failed every attempt and were parked for {{ $labels.consumer }}; their effects (stock, loyalty "
        "points, customer stats) are missing until they are replayed or purged.",
        "events-parked",
    ),
    Alert(
        "StoreplaneConsumerLag",
        'max by (queue) (storeplane_queue_messages{queue=~".+\\\\.events"})',
        "> 1000",
        "10m",
        "page",
        "{{ $labels.queue }}: {{ $value }} events waiting",
        "More than 1000 events wait in {{ $labels.queue }} for 10 minutes, as the broker counts them: its consumer "
        "is down, stuck or too slow.",
        "consumer-lag",
    ),
    Alert(
        "StoreplaneErrorRatioHigh",
        "storeplane:rpc_error_ratio:rate5m",
        "> 0.05",
        "10m",
        "page",
        "{{ $labels.process }}: {{ $value | humanizePercentage }} of calls fail",
        "More than 5 % of the calls {{ $labels.process }} handled in the last 5 minutes ended with a server error "
        "(" + SERVER_ERRORS.replace("|", ", ") + ").",
        "error-ratio",
    ),
    Alert(
        "StoreplaneDatabasePoolExhausted",
        "max by (process, service) (storeplane_db_pool_waiting)",
        "> 0",
        "5m",
        "ticket",
        "{{ $labels.service }}: calls wait for a database connection",
        "Threads of {{ $labels.service }} have been waiting for a pooled database connection for 5 minutes: the "
        "pool is too small for the calls in flight, or connections are held by slow queries.",
        "database-pool",
    ),
    Alert(
        "StoreplanePodRestarting",
        # The gateway's process is Envoy, which exports no process_start_time_seconds: its uptime drops at a restart.
        f'(changes(process_start_time_seconds{{process=~".+"}}[30m]) or resets({EDGE_UPTIME}[30m]))',
        "> 2",
        "0m",
        "page",
        "{{ $labels.pod }} ({{ $labels.process }}) restarted {{ $value }} times in 30 minutes",
        "The process keeps starting again (crash loop, OOM kill, failing probes).",
        "pod-restarting",
    ),
)


def _slo_alerts() -> list[dict[str, Any]]:
    rules = []
    for slo in SLOS:
        for long, short, burn, for_, severity in BURN_WINDOWS:
            threshold = round(burn * slo.budget, 6)
            rules.append(
                {
                    "alert": slo.alert,
                    "expr": f"{slo.recorded(long)} > {threshold} and {slo.recorded(short)} > {threshold}",
                    "for": for_,
                    "labels": {"severity": severity, "slo": slo.name, "burn": _number(burn), "window": long},
                    "annotations": {
                        "summary": slo.summary.replace("{{ $labels.burn }}", _number(burn)),
                        "description": (
                            f"Over the last {long} (and {short}) the share of bad events is above {threshold} "
                            f"({_number(burn)} times the error budget of {slo.budget} of a {slo.objective:.1%} "
                            "objective): at this pace the 30-day budget is gone in "
                            f"{30 / burn:.1f} days."
                        ),
                        "runbook_url": f"{RUNBOOKS}#{slo.runbook}",
                    },
                }
            )
    return rules


def _number(value: float) -> str:
    return f"{value:g}"


def rule_groups() -> list[dict[str, Any]]:
    recording = [{"record": name, "expr": expr} for name, expr in RECORDED.items()]
    alerts = [
        {
            "alert": a.name,
            "expr": a.expr,
            **({"for": a.for_} if a.for_ != "0m" else {}),
            "labels": {"severity": a.severity},
            "annotations": {
                "summary": a.summary,
                "description": a.description,
                "runbook_url": f"{RUNBOOKS}#{a.runbook}",
            },
        }
        for a in ALERTS
    ]
    return [
        {"name": "storeplane.recording", "interval": "30s", "rules": recording},
        {"name": "storeplane.slo", "rules": _slo_alerts()},
        {"name": "storeplane.operations", "rules": alerts},
    ]


def prometheus_rule() -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "storeplane", "labels": {"app.kubernetes.io/name": "storeplane", "role": "alert-rules"}},
        "spec": {"groups": rule_groups()},
    }


def pod_monitor() -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": {"name": "storeplane", "labels": {"app.kubernetes.io/name": "storeplane"}},
        "spec": {
            "selector": {
                "matchExpressions": [
                    {"key": "app.kubernetes.io/name", "operator": "In", "values": list(PROCESSES)},
                ]
            },
            "podMetricsEndpoints": [
                {
                    "port": "metrics",
                    "path": "/metrics",
                    "interval": "15s",
                    # `process` is what every rule and panel groups by (the static test configuration sets it too)
                    "relabelings": [
                        {
                            "sourceLabels": ["__meta_kubernetes_pod_label_app_kubernetes_io_name"],
                            "targetLabel": "process",
                            "action": "replace",
                        }
                    ],
                }
            ],
        },
    }


# --- dashboard --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Panel:
    title: str
    targets: tuple[tuple[str, str], ...]  # (expression, legend)
    unit: str = "short"
    kind: str = "timeseries"


ROWS: tuple[tuple[str, tuple[Panel, ...]], ...] = (
    (
        "Sale funnel",
        (
            Panel(
                "Funnel: baskets opened, items scanned, sales completed (per second)",
                tuple(
                    (f'sum(storeplane:rpc_requests:rate5m{{process="checkout",grpc_method="{m}"}})', m)
                    for m in ("OpenBasket", "ScanItem", "CompleteSale", "VoidBasket")
                ),
                "reqps",
            ),
            Panel(
                "Sales and returns by store and currency (per minute)",
                (
                    (
                        "sum by (store, currency, channel) (rate(storeplane_checkout_sales_total[5m])) * 60",
                        "sales {{store}} {{currency}} {{channel}}",
                    ),
                    (
                        "sum by (store, currency) (rate(storeplane_checkout_returns_total[5m])) * 60",
                        "returns {{store}} {{currency}}",
                    ),
                ),
            ),
            Panel(
                "Sale amount p50 / p90 by currency (major units)",
                tuple(
                    (
                        f"histogram_quantile({q}, sum by (currency, le) "
                        "(rate(storeplane_checkout_sale_amount_bucket[15m])))",
                        f"p{round(q * 100)} {{{{currency}}}}",
                    )
                    for q in (0.5, 0.9)
                ),
            ),
            Panel(
                "Basket duration p50 / p90 by store",
                tuple(
                    (
                        f"histogram_quantile({q}, sum by (store, le) "
                        "(rate(storeplane_checkout_basket_duration_seconds_bucket[15m])))",
                        f"p{round(q * 100)} {{{{store}}}}",
                    )
                    for q in (0.5, 0.9)
                ),
                "s",
            ),
            Panel(
                "Lines left unreserved because stock did not answer (per minute)",
                (
                    (
                        "sum by (store, operation) (rate(storeplane_checkout_lines_unreserved_total[5m])) * 60",
                        "{{store}} {{operation}}",
                    ),
                ),
            ),
            Panel(
                "Loyalty points earned and redeemed (per minute)",
                (
                    (
                        "sum by (store, currency) (rate(storeplane_loyalty_points_earned_total[5m])) * 60",
                        "earned {{store}} {{currency}}",
                    ),
                    (
                        "sum by (store, currency) (rate(storeplane_loyalty_points_redeemed_total[5m])) * 60",
                        "redeemed {{store}} {{currency}}",
                    ),
                ),
            ),
        ),
    ),
    (
        "RED per service",
        (
            Panel("Rate by process", (("sum by (process) (storeplane:rpc_requests:rate5m)", "{{process}}"),), "reqps"),
            Panel(
                "Server-error ratio by process",
                (("storeplane:rpc_error_ratio:rate5m", "{{process}}"),),
                "percentunit",
            ),
            Panel("p99 latency by process", (("storeplane:process_rpc_duration_seconds:p99_5m", "{{process}}"),), "s"),
            Panel(
                "p99 latency by method",
                (("storeplane:rpc_duration_seconds:p99_5m", "{{process}} {{grpc_method}}"),),
                "s",
            ),
        ),
    ),
    (
        "Edge (Envoy)",
        (
            Panel(
                "Edge calls by HTTP status class (per second; gRPC errors are 2xx)",
                (
                    (
                        f"sum by (envoy_response_code_class) (rate(envoy_http_downstream_rq_xx{{{EDGE}}}[5m]))",
                        "{{envoy_response_code_class}}xx",
                    ),
                ),
                "reqps",
            ),
            Panel(
                "Edge p99 latency (ms)",
                (
                    (
                        "histogram_quantile(0.99, sum by (le) "
                        f"(rate(envoy_http_downstream_rq_time_bucket{{{EDGE}}}[5m])))",
                        "p99",
                    ),
                ),
                "ms",
            ),
            Panel(
                "Backend responses by service and HTTP status class (per second)",
                (
                    (
                        "sum by (envoy_cluster_name, envoy_response_code_class) "
                        f"(rate(envoy_cluster_upstream_rq_xx{{{EDGE_BACKENDS}}}[5m]))",
                        "{{envoy_cluster_name}} {{envoy_response_code_class}}xx",
                    ),
                ),
                "reqps",
            ),
            Panel(
                "Refused at the edge: rate limited, token refused (per second)",
                (
                    (
                        "sum by (envoy_local_http_ratelimit_prefix) "
                        '(rate(envoy_http_local_rate_limit_rate_limited{process="gateway"}[5m]))',
                        "{{envoy_local_http_ratelimit_prefix}}",
                    ),
                    (f"sum(rate(envoy_http_jwt_authn_denied{{{EDGE}}}[5m]))", "token refused"),
                ),
                "reqps",
            ),
        ),
    ),
    (
        "Event flow and lag",
        (
            Panel(
                "Events published and consumed (per second)",
                (
                    ("sum by (service) (rate(storeplane_events_published_total[5m]))", "published by {{service}}"),
                    (
                        "sum by (consumer, outcome) (rate(storeplane_events_consumed_total[5m]))",
                        "{{consumer}} {{outcome}}",
                    ),
                ),
            ),
            Panel("Queue depth (broker)", ((ALERTS[2].signal, "{{queue}}"),)),
            Panel(
                "Event lag p99 (occurrence to handler commit)",
                (("storeplane:event_lag_seconds:p99_5m", "{{consumer}}"),),
                "s",
            ),
            Panel(
                "Outbox backlog and oldest age",
                (
                    ("max by (service) (storeplane_outbox_backlog)", "backlog {{service}}"),
                    (ALERTS[0].signal, "oldest age {{service}}"),
                ),
            ),
            Panel("Parked events", ((ALERTS[1].signal, "{{consumer}}"),)),
        ),
    ),
    (
        "Database pool",
        (
            Panel(
                "Connections in use / capacity",
                (
                    ("max by (service) (storeplane_db_pool_in_use)", "in use {{service}}"),
                    ("max by (service) (storeplane_db_pool_capacity)", "capacity {{service}}"),
                ),
            ),
            Panel("Calls waiting for a connection", ((ALERTS[4].signal, "{{service}}"),)),
        ),
    ),
    (
        "SLO burn",
        tuple(
            Panel(
                f"{slo.name.replace('_', ' ')}: error budget burn rate ({slo.objective:.1%})",
                tuple((f"{slo.recorded(w)} / {slo.budget}", f"burn {w}") for w in WINDOWS),
            )
            for slo in SLOS
        ),
    ),
)


def dashboard_queries() -> list[str]:
    return [expr for _, panels in ROWS for panel in panels for expr, _ in panel.targets]


def dashboard() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    y = 0
    next_id = 1
    for row_title, row_panels in ROWS:
        panels.append(
            {"id": next_id, "type": "row", "title": row_title, "collapsed": False, "gridPos": _grid(0, y, 24, 1)}
        )
        next_id += 1
        y += 1
        for i, panel in enumerate(row_panels):
            panels.append(
                {
                    "id": next_id,
                    "type": panel.kind,
                    "title": panel.title,
                    "datasource": {"type": "prometheus", "uid": "${datasource}"},
                    "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
                    "gridPos": _grid((i % 3) * 8, y + (i // 3) * 8, 8, 8),
                    "targets": [
                        {"refId": chr(ord("A") + n), "expr": expr, "legendFormat": legend}
                        for n, (expr, legend) in enumerate(panel.targets)
                    ],
                }
            )
            next_id += 1
        y += ((len(row_panels) + 2) // 3) * 8
    return {
        "uid": "storeplane-overview",
        "title": "storeplane",
        "tags": ["storeplane"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-3h", "to": "now"},
        "templating": {
            "list": [{"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"}]
        },
        "panels": panels,
    }


def _grid(x: int, y: int, w: int, h: int) -> dict[str, int]:
    return {"x": x, "y": y, "w": w, "h": h}


# --- files ------------------------------------------------------------------------------------------------------

HEADER = "# Generated by k8s/components/monitoring/generate.py: edit that, then run it.\n"


def _yaml(doc: dict[str, Any]) -> str:
    return HEADER + yaml.safe_dump(doc, sort_keys=False, width=120, allow_unicode=True)


DEV = HERE.parents[1] / "overlays" / "dev" / "observability"


def _headless(process: str) -> str:
    # The services' Services are headless (DNS answers with the pods); the gateway's has a virtual IP, so the dev
    # overlay adds a headless `gateway-metrics` beside it (observability/gateway-metrics.yaml).
    return "gateway-metrics" if process == "gateway" else process


def dev_prometheus_config() -> dict[str, Any]:
    """The dev overlay's own Prometheus (no operator there): each process found by its headless Service's DNS name,
    on its conventional metrics port, with the `process` label the PodMonitor sets in a cluster with the operator."""
    return {
        "global": {"scrape_interval": "15s", "evaluation_interval": "15s"},
        "rule_files": ["/etc/prometheus/rules.yaml"],
        "scrape_configs": [
            {
                "job_name": "storeplane",
                "dns_sd_configs": [
                    {
                        "names": [f"{_headless(name)}.{NAMESPACE}.svc.cluster.local"],
                        "type": "A",
                        "port": METRICS_PORTS[name],
                    }
                    for name in PROCESSES
                ],
                "relabel_configs": [
                    {
                        "source_labels": ["__meta_dns_name"],
                        "regex": r"([a-z]+)[.-].*",
                        "target_label": "process",
                        "replacement": "$1",
                    }
                ],
            }
        ],
    }


def outputs() -> dict[Path, str]:
    return {
        HERE / "prometheusrule.yaml": _yaml(prometheus_rule()),
        HERE / "podmonitor.yaml": _yaml(pod_monitor()),
        HERE / "dashboards" / "storeplane.json": json.dumps(dashboard(), indent=2) + "\n",
        DEV / "prometheus.yml": _yaml(dev_prometheus_config()),
        DEV / "rules.yaml": _yaml({"groups": rule_groups()}),
    }


def main() -> int:
    for path, text in outputs().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(HERE.parents[2])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
