"""The monitoring component (k8s/components/monitoring): rendered in both overlays, its prometheus-operator objects
valid against the CRD fields they use, the PodMonitor aimed at every process's metrics port, every alert with a
summary, a description and a runbook section, and the committed files exactly what generate.py writes.

kubernetes-validate has no schema for the prometheus-operator CRDs: the schemas below are the subset of
monitoring.coreos.com/v1 (PrometheusRule, PodMonitor, prometheus-operator v0.7x) these objects use, strict
(additionalProperties: false, required fields and enums as in the CRDs), so a misspelt field fails here.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from deploy_helpers import (
    OVERLAYS,
    PROCESSES,
    ROOT,
    Manifests,
    main_container,
    pod_spec,
    require_module,
    serving_container,
)

COMPONENT = ROOT / "k8s" / "components" / "monitoring"
RUNBOOKS = ROOT / "docs" / "runbooks.md"

_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_DURATION = {
    "type": "string",
    "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}
_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string"},
        "namespace": {"type": "string"},
        "labels": _STRING_MAP,
        "annotations": _STRING_MAP,
    },
    "additionalProperties": False,
}
_RULE = {
    "type": "object",
    "required": ["expr"],
    "properties": {
        "record": {"type": "string"},
        "alert": {"type": "string"},
        "expr": {"type": ["string", "integer"]},
        "for": _DURATION,
        "keep_firing_for": _DURATION,
        "labels": _STRING_MAP,
        "annotations": _STRING_MAP,
    },
    "oneOf": [{"required": ["record"]}, {"required": ["alert"]}],
    "additionalProperties": False,
}
PROMETHEUS_RULE = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "properties": {
                "groups": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name"],
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "interval": _DURATION,
                            "rules": {"type": "array", "items": _RULE},
                        },
                        "additionalProperties": False,
                    },
                }
            },
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}
_SELECTOR = {
    "type": "object",
    "properties": {
        "matchLabels": _STRING_MAP,
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["key", "operator"],
                "properties": {
                    "key": {"type": "string"},
                    "operator": {"type": "string", "enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": {"type": "array", "items": {"type": "string"}},
                },
                "additionalProperties": False,
            },
        },
    },
    "additionalProperties": False,
}
_RELABEL = {
    "type": "object",
    "properties": {
        "sourceLabels": {"type": "array", "items": {"type": "string", "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"}},
        "separator": {"type": "string"},
        "targetLabel": {"type": "string"},
        "regex": {"type": "string"},
        "modulus": {"type": "integer"},
        "replacement": {"type": "string"},
        "action": {
            "type": "string",
            "enum": [
                "replace",
                "Replace",
                "keep",
                "Keep",
                "drop",
                "Drop",
                "hashmod",
                "HashMod",
                "labelmap",
                "LabelMap",
                "labeldrop",
                "LabelDrop",
                "labelkeep",
                "LabelKeep",
                "lowercase",
                "Lowercase",
                "uppercase",
                "Uppercase",
                "keepequal",
                "KeepEqual",
                "dropequal",
                "DropEqual",
            ],
        },
    },
    "additionalProperties": False,
}
POD_MONITOR = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PodMonitor"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "required": ["selector"],
            "properties": {
                "selector": _SELECTOR,
                "jobLabel": {"type": "string"},
                "namespaceSelector": {"type": "object"},
                "podMetricsEndpoints": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "scheme": {"type": "string", "enum": ["http", "https"]},
                            "interval": _DURATION,
                            "scrapeTimeout": _DURATION,
                            "honorLabels": {"type": "boolean"},
                            "relabelings": {"type": "array", "items": _RELABEL},
                            "metricRelabelings": {"type": "array", "items": _RELABEL},
                        },
                        "additionalProperties": False,
                    },
                },
            },
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}
SCHEMAS = {"PrometheusRule": PROMETHEUS_RULE, "PodMonitor": POD_MONITOR}


def _generator() -> ModuleType:
    """k8s/components/monitoring/generate.py as a module (not a package: loaded from its path)."""
    if "monitoring_generate" in sys.modules:
        return sys.modules["monitoring_generate"]
    spec = importlib.util.spec_from_file_location("monitoring_generate", COMPONENT / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["monitoring_generate"] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def _errors(doc: dict[str, Any]) -> list[str]:
    jsonschema = require_module("jsonschema")
    validator = jsonschema.Draft202012Validator(SCHEMAS[doc["kind"]])
    return [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(doc)]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_monitoring_objects_render_in_every_overlay_and_validate(manifests: dict[str, Manifests], overlay: str) -> None:
    m = manifests[overlay]
    for kind in SCHEMAS:
        (doc,) = m.of_kind(kind)
        assert doc["metadata"]["namespace"] == "storeplane"
        assert not _errors(doc), _errors(doc)
    dashboard = m.get("ConfigMap", "storeplane-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["storeplane.json"]) == json.loads(
        (COMPONENT / "dashboards" / "storeplane.json").read_text()
    )


def test_the_schemas_catch_a_misspelt_field() -> None:
    rule = _generator().prometheus_rule()
    rule["spec"]["groups"][0]["rules"][0]["exprs"] = "up"
    assert any("exprs" in e for e in _errors(rule))
    monitor = _generator().pod_monitor()
    monitor["spec"]["podMetricsEndpoints"][0]["intervall"] = "15s"
    assert any("intervall" in e for e in _errors(monitor))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_pod_monitor_scrapes_every_process_on_its_metrics_port(
    manifests: dict[str, Manifests], overlay: str
) -> None:
    m = manifests[overlay]
    (monitor,) = m.of_kind("PodMonitor")
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    [expression] = monitor["spec"]["selector"]["matchExpressions"]
    selected = []
    for deployment in m.of_kind("Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        if expression["operator"] == "In" and labels.get(expression["key"]) in expression["values"]:
            selected.append(deployment["metadata"]["name"])
            ports = {p["name"] for p in serving_container(deployment)["ports"]}
            assert endpoint["port"] in ports, deployment["metadata"]["name"]
    assert sorted(selected) == sorted(PROCESSES)
    # nothing else (PostgreSQL, RabbitMQ) is selected
    for workload in m.workloads():
        if workload["metadata"]["name"] not in PROCESSES:
            labels = pod_spec(workload) and workload["spec"]["template"]["metadata"]["labels"]
            assert labels.get(expression["key"]) not in expression["values"]
    # the label every rule and panel groups by
    assert {
        "sourceLabels": ["__meta_kubernetes_pod_label_app_kubernetes_io_name"],
        "targetLabel": "process",
        "action": "replace",
    } in endpoint["relabelings"]


def _runbook_sections() -> dict[str, str]:
    text = RUNBOOKS.read_text()
    sections: dict[str, str] = {}
    for block in re.split(r"^## ", text, flags=re.M)[1:]:
        heading, _, body = block.partition("\n")
        anchor = re.sub(r"[^a-z0-9 -]", "", heading.strip().lower()).replace(" ", "-")
        sections[anchor] = body
    return sections


def test_every_alert_has_a_summary_a_description_and_a_runbook_section_naming_a_command() -> None:
    sections = _runbook_sections()
    alerts = [r for g in _generator().rule_groups() for r in g["rules"] if "alert" in r]
    assert {a["alert"] for a in alerts} >= {
        "StoreplaneCompleteSaleAvailabilityBurn",
        "StoreplaneScanItemLatencyBurn",
        "StoreplaneOutboxStale",
        "StoreplaneEventsParked",
        "StoreplaneConsumerLag",
        "StoreplaneErrorRatioHigh",
        "StoreplanePodRestarting",
    }
    for alert in alerts:
        annotations = alert["annotations"]
        assert annotations["summary"] and annotations["description"], alert["alert"]
        anchor = annotations["runbook_url"].split("#", 1)[1]
        assert anchor in sections, f"{alert['alert']}: no section '{anchor}' in docs/runbooks.md"
        assert alert["alert"] in sections[anchor], f"{anchor} does not name {alert['alert']}"
        assert re.search(r"`storeplane [a-z]", sections[anchor]), f"{anchor} names no storeplane command"
        assert alert["labels"]["severity"] in {"page", "ticket"}


def test_committed_files_are_what_the_generator_writes() -> None:
    for path, text in _generator().outputs().items():
        assert path.is_file() and path.read_text() == text, (
            f"{path.relative_to(ROOT)} is stale: run `uv run python k8s/components/monitoring/generate.py`"
        )


def test_dashboard_queries_are_the_rules_own_expressions() -> None:
    """Where a panel and a rule show the same thing, the panel queries the recorded series or the alert's signal."""
    gen = _generator()
    queries = gen.dashboard_queries()
    recorded = set(gen.RECORDED)
    used = {name for name in recorded if any(name in q for q in queries)}
    assert "storeplane:rpc_error_ratio:rate5m" in used
    for slo in gen.SLOS:
        assert all(any(slo.recorded(w) in q for q in queries) for w in gen.WINDOWS), slo.name
    for alert in gen.ALERTS:
        if "process_start_time_seconds" in alert.signal:
            continue  # restarts: shown by Kubernetes, not on this dashboard
        assert alert.signal in queries or alert.signal in recorded, alert.name
    # and no panel spells out a recorded expression again by hand
    for q in queries:
        assert q not in gen.RECORDED.values(), q


def test_no_unbounded_label_in_any_expression() -> None:
    gen = _generator()
    texts = [*gen.RECORDED.values(), *(a.expr for a in gen.ALERTS), *gen.dashboard_queries()]
    for text in texts:
        for grouping in re.findall(r"by \(([^)]*)\)", text):
            labels = {label.strip() for label in grouping.split(",")}
            assert labels <= {
                "process",
                "grpc_service",
                "grpc_method",
                "le",
                "service",
                "consumer",
                "outcome",
                "queue",
                "store",
                "currency",
                "channel",
                "operation",
                # Envoy's (the gateway's): five status classes, the fixed clusters, the two rate limits
                "envoy_response_code_class",
                "envoy_cluster_name",
                "envoy_local_http_ratelimit_prefix",
            }, text


def test_component_directory_is_what_kustomize_reads() -> None:
    assert (COMPONENT / "kustomization.yaml").is_file()
    for overlay in OVERLAYS:
        text = (ROOT / "k8s" / "overlays" / overlay / "kustomization.yaml").read_text()
        assert "../../components/monitoring" in text, overlay
    assert Path(COMPONENT / "dashboards" / "storeplane.json").is_file()


# --- the dev overlay's own observability stack (Tilt) -----------------------------------------------------------


def _container(m: Manifests, name: str) -> dict[str, Any]:
    [container] = pod_spec(m.get("StatefulSet", name))["containers"]
    return container


def _mounted(m: Manifests, workload: str, volume: str) -> dict[str, str]:
    """The data of the ConfigMap a StatefulSet mounts as `volume` (by its generated, hashed name)."""
    volumes = {v["name"]: v for v in pod_spec(m.get("StatefulSet", workload))["volumes"]}
    data: dict[str, str] = m.get("ConfigMap", volumes[volume]["configMap"]["name"])["data"]
    return data


def _ports(container: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container["ports"]}


def test_dev_processes_send_spans_to_the_collector_which_forwards_them_to_jaeger(
    manifests: dict[str, Manifests],
) -> None:
    dev = manifests["dev"]
    collector = dev.get("Service", "otel-collector")
    http = {p["name"]: p["port"] for p in collector["spec"]["ports"]}["otlp-http"]
    assert http == _ports(_container(dev, "otel-collector"))["otlp-http"]
    for deployment in dev.of_kind("Deployment"):
        data = dev.configmap_data(deployment, main_container(deployment))
        assert data["OTEL_EXPORTER_OTLP_ENDPOINT"] == f"http://otel-collector:{http}", deployment["metadata"]["name"]
    config = yaml.safe_load(_mounted(dev, "otel-collector", "config")["config.yaml"])
    endpoint = config["exporters"]["otlp/jaeger"]["endpoint"]
    host, port = endpoint.split(":")
    jaeger = {p["name"]: p["port"] for p in dev.get("Service", host)["spec"]["ports"]}
    assert int(port) == jaeger["otlp-grpc"] == _ports(_container(dev, "jaeger"))["otlp-grpc"]
    assert config["service"]["pipelines"]["traces"]["exporters"] == ["otlp/jaeger"]
    # no production overlay runs these
    assert not manifests["prod"].find("StatefulSet", "otel-collector")
    for name in ("jaeger", "prometheus", "grafana"):
        assert not manifests["prod"].find("StatefulSet", name)


def test_dev_prometheus_loads_the_generated_rules_and_finds_every_process(manifests: dict[str, Manifests]) -> None:
    dev = manifests["dev"]
    data = _mounted(dev, "prometheus", "config")
    assert yaml.safe_load(data["rules.yaml"])["groups"] == _generator().rule_groups()
    config = yaml.safe_load(data["prometheus.yml"])
    assert config["rule_files"] == ["/etc/prometheus/rules.yaml"]
    mounts = {m["name"]: m["mountPath"] for m in _container(dev, "prometheus")["volumeMounts"]}
    assert mounts["config"] == "/etc/prometheus"
    [job] = config["scrape_configs"]
    conventions = {p: port for p, port in _generator().METRICS_PORTS.items()}
    found = {}
    for sd in job["dns_sd_configs"]:
        [name] = sd["names"]
        service_name = name.split(".")[0]
        service = dev.get("Service", service_name)
        assert service["spec"].get("clusterIP") == "None", f"{service_name}: DNS must answer with the pods"
        process = service["spec"]["selector"]["app.kubernetes.io/name"]
        found[process] = sd["port"]
        deployment = dev.get("Deployment", process)
        assert _ports(serving_container(deployment))["metrics"] == sd["port"]
        assert re.fullmatch(job["relabel_configs"][0]["regex"], name).group(1) == process  # type: ignore[union-attr]
    assert found == conventions


def test_dev_grafana_provisions_prometheus_jaeger_and_the_dashboard(manifests: dict[str, Manifests]) -> None:
    dev = manifests["dev"]
    grafana = pod_spec(dev.get("StatefulSet", "grafana"))
    volumes = {v["name"]: v for v in grafana["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in grafana["containers"][0]["volumeMounts"]}
    assert volumes["dashboards"]["configMap"]["name"] == "storeplane-dashboard"
    providers = yaml.safe_load(_mounted(dev, "grafana", "dashboard-providers")["grafana-dashboard-providers.yaml"])
    assert providers["providers"][0]["options"]["path"] == mounts["dashboards"]
    sources = yaml.safe_load(_mounted(dev, "grafana", "datasources")["grafana-datasources.yaml"])
    urls = {s["type"]: s["url"] for s in sources["datasources"]}
    assert urls == {"prometheus": "http://prometheus:9090", "jaeger": "http://jaeger:16686"}
    dashboard = json.loads(dev.get("ConfigMap", "storeplane-dashboard")["data"]["storeplane.json"])
    assert all(p["datasource"]["type"] == "prometheus" for p in dashboard["panels"] if p["type"] != "row")
