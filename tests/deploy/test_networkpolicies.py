"""The NetworkPolicies, evaluated: who may open a connection to which pod and port.

A small evaluator of the networking.k8s.io/v1 ingress semantics (policies select pods;
a pod selected by no Ingress policy accepts everything; otherwise a connection needs one
rule whose peers and ports match) is run over the rendered overlays for the flows that
matter: outside -> gateway, gateway -> services, services -> services, services ->
PostgreSQL and RabbitMQ, and everything that must be refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from deploy_helpers import DB_SERVICES, OVERLAYS, PROCESSES, Manifests, all_containers, pod_spec

NAMESPACE = "storeplane"


@dataclass(frozen=True)
class Source:
    """Where a connection comes from: a pod (labels) in a namespace (labels), or outside the cluster."""

    pod_labels: dict[str, str] = field(default_factory=dict)
    namespace: str | None = NAMESPACE  # None: not a pod (internet, node, load balancer)
    namespace_labels: dict[str, str] = field(default_factory=dict)


def _matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        value = labels.get(expr["key"])
        op = expr["operator"]
        if op == "In" and value not in expr["values"]:
            return False
        if op == "NotIn" and value in expr["values"]:
            return False
        if op == "Exists" and expr["key"] not in labels:
            return False
        if op == "DoesNotExist" and expr["key"] in labels:
            return False
    return True


def _peer_matches(peer: dict[str, Any], source: Source) -> bool:
    if "ipBlock" in peer:
        return source.namespace is None and peer["ipBlock"]["cidr"] in {"0.0.0.0/0", "::/0"}
    if source.namespace is None:
        return False
    ns_labels = {"kubernetes.io/metadata.name": source.namespace, **source.namespace_labels}
    if "namespaceSelector" in peer:
        if not _matches(peer["namespaceSelector"], ns_labels):
            return False
    elif source.namespace != NAMESPACE:
        return False  # a bare podSelector means pods of the policy's own namespace
    return _matches(peer.get("podSelector", {}), source.pod_labels)


class Cluster:
    def __init__(self, m: Manifests) -> None:
        self.policies = [
            p for p in m.of_kind("NetworkPolicy") if "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
        ]
        self.pods: dict[str, dict[str, Any]] = {}
        for workload in m.workloads():
            ports = {}
            for container in all_containers(workload):
                for port in container.get("ports", []):
                    ports[port["name"]] = port["containerPort"]
            self.pods[workload["metadata"]["name"]] = {
                "labels": workload["spec"]["template"]["metadata"]["labels"],
                "ports": ports,
            }

    def allowed(self, source: Source, target: str, port_name: str) -> bool:
        pod = self.pods[target]
        port = pod["ports"][port_name]
        selecting = [p for p in self.policies if _matches(p["spec"]["podSelector"], pod["labels"])]
        if not selecting:
            return True
        for policy in selecting:
            for rule in policy["spec"].get("ingress", []):
                peers = rule.get("from")
                if peers and not any(_peer_matches(peer, source) for peer in peers):
                    continue
                rule_ports = rule.get("ports")
                if not rule_ports:
                    return True
                for rp in rule_ports:
                    wanted = rp.get("port")
                    if wanted is None or wanted in (port, port_name):
                        return True
        return False

    def pod(self, name: str) -> Source:
        return Source(pod_labels=self.pods[name]["labels"])


INTERNET = Source(namespace=None)
OTHER_NAMESPACE = Source(pod_labels={"app": "something"}, namespace="shop-frontend")
STRANGER_POD = Source(pod_labels={"app": "debug"})  # a pod in our namespace that is not ours
PROMETHEUS = Source(pod_labels={"app.kubernetes.io/name": "prometheus"}, namespace="monitoring")


@pytest.fixture(scope="module", params=OVERLAYS)
def cluster(request: pytest.FixtureRequest, manifests: dict[str, Manifests]) -> Cluster:
    return Cluster(manifests[request.param])


def test_default_deny_covers_every_pod(cluster: Cluster) -> None:
    for name, pod in cluster.pods.items():
        for port_name in pod["ports"]:
            if (name, port_name) == ("gateway", "grpc"):
                continue  # the one open door
            assert not cluster.allowed(STRANGER_POD, name, port_name), f"{name}:{port_name} open to any pod"


def test_only_the_gateway_is_reachable_from_outside(cluster: Cluster) -> None:
    for source in (INTERNET, OTHER_NAMESPACE):
        assert cluster.allowed(source, "gateway", "grpc")
        assert not cluster.allowed(source, "gateway", "metrics")
        for name in cluster.pods:
            if name != "gateway":
                for port_name in cluster.pods[name]["ports"]:
                    assert not cluster.allowed(source, name, port_name), f"{name}:{port_name}"


def test_services_take_grpc_from_the_gateway_and_each_other(cluster: Cluster) -> None:
    for target in DB_SERVICES:
        for caller in PROCESSES:
            if caller != target:
                assert cluster.allowed(cluster.pod(caller), target, "grpc"), f"{caller} -> {target}"


def test_prometheus_scrapes_metrics_only(cluster: Cluster) -> None:
    for name in PROCESSES:
        assert cluster.allowed(PROMETHEUS, name, "metrics"), name
        if name != "gateway":
            assert not cluster.allowed(PROMETHEUS, name, "grpc"), name


def test_only_services_reach_postgres_and_rabbitmq(manifests: dict[str, Manifests]) -> None:
    cluster = Cluster(manifests["dev"])
    for target, port_name in (("postgres", "postgres"), ("rabbitmq", "amqp"), ("rabbitmq", "management")):
        for name in DB_SERVICES:
            expected = port_name != "management"
            assert cluster.allowed(cluster.pod(name), target, port_name) is expected, f"{name} -> {target}"
        for source in (cluster.pod("gateway"), INTERNET, OTHER_NAMESPACE, STRANGER_POD, PROMETHEUS):
            assert not cluster.allowed(source, target, port_name), f"{source} -> {target}:{port_name}"


def test_the_evaluator_itself() -> None:
    """A pod no policy selects is open; a selected pod is closed except for what a rule allows."""
    m = Manifests(
        [
            {
                "kind": "NetworkPolicy",
                "metadata": {"name": "p"},
                "spec": {
                    "podSelector": {"matchLabels": {"app": "a"}},
                    "policyTypes": ["Ingress"],
                    "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "b"}}}], "ports": [{"port": "web"}]}],
                },
            },
            *(
                {
                    "kind": "Deployment",
                    "metadata": {"name": n},
                    "spec": {
                        "template": {
                            "metadata": {"labels": {"app": n}},
                            "spec": {"containers": [{"name": n, "ports": [{"name": "web", "containerPort": 80}]}]},
                        }
                    },
                }
                for n in ("a", "b", "c")
            ),
        ]
    )
    cluster = Cluster(m)
    assert cluster.allowed(cluster.pod("b"), "a", "web")
    assert not cluster.allowed(cluster.pod("c"), "a", "web")
    assert not cluster.allowed(Source(pod_labels={"app": "b"}, namespace="elsewhere"), "a", "web")
    assert cluster.allowed(cluster.pod("c"), "b", "web")
    assert pod_spec(m.get("Deployment", "a"))["containers"]


def test_dev_observability_flows(manifests: dict[str, Manifests]) -> None:
    """Spans: processes -> collector -> Jaeger; metrics: the dev Prometheus -> every process's metrics port only;
    Grafana -> Prometheus and Jaeger's query API. Nobody else reaches them (their UIs are port-forwarded)."""
    cluster = Cluster(manifests["dev"])
    collector, jaeger = cluster.pod("otel-collector"), cluster.pod("jaeger")
    prometheus, grafana = cluster.pod("prometheus"), cluster.pod("grafana")
    for name in PROCESSES:
        assert cluster.allowed(cluster.pod(name), "otel-collector", "otlp-http"), name
        assert cluster.allowed(prometheus, name, "metrics"), name
        assert not cluster.allowed(prometheus, name, "grpc") or name == "gateway", name
        assert not cluster.allowed(collector, name, "metrics"), name
    assert cluster.allowed(collector, "jaeger", "otlp-grpc")
    assert cluster.allowed(grafana, "jaeger", "ui") and cluster.allowed(grafana, "prometheus", "web")
    for stranger in (STRANGER_POD, OTHER_NAMESPACE, INTERNET):
        for target, port in (
            ("otel-collector", "otlp-http"),
            ("jaeger", "ui"),
            ("prometheus", "web"),
            ("grafana", "web"),
        ):
            assert not cluster.allowed(stranger, target, port), (stranger, target)
    assert not cluster.allowed(jaeger, "prometheus", "web")
    assert not cluster.allowed(cluster.pod("checkout"), "jaeger", "otlp-grpc")
