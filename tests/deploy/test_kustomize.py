"""Every overlay renders, and every rendered object is valid Kubernetes.

Core kinds are validated with `kubernetes-validate --strict` (bundled schemas, offline)
against the oldest Kubernetes the manifests support (1.30: native gRPC probes, the preStop
`sleep` action) and the newest schema the tool ships. Gateway API objects are CRDs the tool
has no schema for; they are checked here against their required fields and enums
(Gateway API v1, standard channel) and against each other.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_helpers import (
    OVERLAYS,
    PROCESSES,
    ROOT,
    Manifests,
    require_module,
    require_tool,
)

MIN_KUBERNETES = "1.30.0"
GATEWAY_API_KINDS = {"Gateway", "GRPCRoute"}
# prometheus-operator CRDs: validated in test_monitoring.py against vendored schemas of the fields we use
MONITORING_KINDS = {"PodMonitor", "PrometheusRule"}


def test_every_overlay_renders(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for name in (*OVERLAYS, "base"):
        kinds = {d["kind"] for d in rendered[name]}
        assert {"Deployment", "Service", "ServiceAccount", "ConfigMap", "NetworkPolicy"} <= kinds, name
        names = {d["metadata"]["name"] for d in rendered[name] if d["kind"] == "Deployment"}
        assert names == set(PROCESSES), name


def test_everything_is_namespaced_in_storeplane(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for name in OVERLAYS:
        for doc in rendered[name]:
            if doc["kind"] == "Namespace":
                continue
            assert doc["metadata"].get("namespace") == "storeplane", f"{name}: {doc['kind']}/{doc['metadata']['name']}"


def _latest_schema_version() -> str:
    utils = require_module("kubernetes_validate.utils")
    return utils.latest_version()


def _validate(files: list[Path]) -> tuple[int, str]:
    tool = require_tool("kubernetes-validate")
    cmd = [tool, "--strict", "--quiet", "-k", MIN_KUBERNETES, "-k", _latest_schema_version(), *map(str, files)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    return proc.returncode, proc.stdout + proc.stderr


def test_rendered_objects_validate_strictly(rendered_text: dict[str, str], tmp_path: Path) -> None:
    files = []
    for name in (*OVERLAYS, "base"):
        path = tmp_path / f"{name}.yaml"
        path.write_text(rendered_text[name])
        files.append(path)
    rc, output = _validate(files)
    problems = []
    for line in output.splitlines():
        if line.startswith("WARN"):
            # only CRDs may lack a schema, and only the Gateway API and prometheus-operator ones are expected
            m = re.search(r"schema for kind (\w+) with api version (\S+)", line)
            gateway_api = m and m.group(1) in GATEWAY_API_KINDS and m.group(2).startswith("gateway.networking.k8s.io/")
            monitoring = m and m.group(1) in MONITORING_KINDS and m.group(2) == "monitoring.coreos.com/v1"
            if not (gateway_api or monitoring):
                problems.append(line)
        elif line.strip():
            problems.append(line)
    assert rc == 0 and not problems, "\n".join(problems) or output


def test_strict_validation_catches_a_wrong_field(tmp_path: Path) -> None:
    """Guard against a validator that silently accepts everything (wrong flags, empty schemas)."""
    bad = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {
            "selector": {"matchLabels": {"a": "b"}},
            "template": {
                "metadata": {"labels": {"a": "b"}},
                "spec": {"containers": [{"name": "x", "image": "x", "readinessProbe": {"grpcc": {"port": 1}}}]},
            },
        },
    }
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    rc, output = _validate([path])
    assert rc != 0, output
    assert "grpcc" in output


# --- Gateway API (v1, standard channel): required fields, enums and patterns of the CRDs ---

_DNS_LABELS = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_HOSTNAME = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_GRPC_SERVICE_NAME = r"^\.?[A-Za-z_][A-Za-z_0-9]*(\.[A-Za-z_][A-Za-z_0-9]*)*$"
_PORT = {"type": "integer", "minimum": 1, "maximum": 65535}
_META = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string", "pattern": _DNS_LABELS, "maxLength": 253}},
}
_PARENT_REF = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "group": {"type": "string"},
        "kind": {"type": "string"},
        "namespace": {"type": "string"},
        "name": {"type": "string", "minLength": 1, "maxLength": 253},
        "sectionName": {"type": "string", "pattern": _DNS_LABELS},
        "port": _PORT,
    },
}
_BACKEND_REF = {
    "type": "object",
    "required": ["name", "port"],  # port: required (CEL) when the backend is a Service
    "additionalProperties": False,
    "properties": {
        "group": {"type": "string"},
        "kind": {"type": "string"},
        "namespace": {"type": "string"},
        "name": {"type": "string", "minLength": 1, "maxLength": 253},
        "port": _PORT,
        "weight": {"type": "integer", "minimum": 0, "maximum": 1000000},
        "filters": {"type": "array"},
    },
}
GATEWAY_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "gateway.networking.k8s.io/v1"},
        "metadata": _META,
        "spec": {
            "type": "object",
            "required": ["gatewayClassName", "listeners"],
            "additionalProperties": False,
            "properties": {
                "gatewayClassName": {"type": "string", "minLength": 1, "maxLength": 253},
                "addresses": {"type": "array"},
                "infrastructure": {"type": "object"},
                "listeners": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 64,
                    "items": {
                        "type": "object",
                        "required": ["name", "port", "protocol"],
                        "additionalProperties": False,
                        "properties": {
                            "name": {"type": "string", "pattern": _DNS_LABELS, "maxLength": 253},
                            "hostname": {"type": "string", "pattern": _HOSTNAME, "maxLength": 253},
                            "port": _PORT,
                            "protocol": {"type": "string", "minLength": 1, "maxLength": 255},
                            "tls": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    "mode": {"enum": ["Terminate", "Passthrough"]},
                                    "certificateRefs": {
                                        "type": "array",
                                        "maxItems": 64,
                                        "items": {
                                            "type": "object",
                                            "required": ["name"],
                                            "properties": {
                                                "group": {"type": "string"},
                                                "kind": {"type": "string"},
                                                "name": {"type": "string", "minLength": 1},
                                                "namespace": {"type": "string"},
                                            },
                                            "additionalProperties": False,
                                        },
                                    },
                                    "options": {"type": "object"},
                                },
                            },
                            "allowedRoutes": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    "namespaces": {
                                        "type": "object",
                                        "properties": {
                                            "from": {"enum": ["All", "Selector", "Same"]},
                                            "selector": {"type": "object"},
                                        },
                                        "additionalProperties": False,
                                    },
                                    "kinds": {
                                        "type": "array",
                                        "maxItems": 8,
                                        "items": {
                                            "type": "object",
                                            "required": ["kind"],
                                            "properties": {"group": {"type": "string"}, "kind": {"type": "string"}},
                                            "additionalProperties": False,
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}
GRPCROUTE_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "gateway.networking.k8s.io/v1"},
        "metadata": _META,
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "parentRefs": {"type": "array", "minItems": 1, "maxItems": 32, "items": _PARENT_REF},
                "hostnames": {
                    "type": "array",
                    "maxItems": 16,
                    "items": {"type": "string", "pattern": _HOSTNAME, "maxLength": 253},
                },
                "rules": {
                    "type": "array",
                    "maxItems": 16,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "name": {"type": "string"},
                            "filters": {"type": "array"},
                            "backendRefs": {"type": "array", "minItems": 1, "items": _BACKEND_REF},
                            "matches": {
                                "type": "array",
                                "maxItems": 64,
                                "items": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {
                                        "headers": {"type": "array"},
                                        "method": {
                                            "type": "object",
                                            "additionalProperties": False,
                                            "anyOf": [{"required": ["service"]}, {"required": ["method"]}],
                                            "properties": {
                                                "type": {"enum": ["Exact", "RegularExpression"]},
                                                "service": {
                                                    "type": "string",
                                                    "maxLength": 1024,
                                                    "pattern": _GRPC_SERVICE_NAME,
                                                },
                                                "method": {
                                                    "type": "string",
                                                    "maxLength": 1024,
                                                    "pattern": r"^[A-Za-z_][A-Za-z_0-9]*$",
                                                },
                                            },
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
            },
            "required": ["parentRefs", "rules"],
        },
    },
}


@pytest.fixture(scope="module")
def prod(manifests: dict[str, Manifests]) -> Manifests:
    return manifests["prod"]


def test_gateway_api_objects_have_their_required_fields(prod: Manifests) -> None:
    jsonschema = require_module("jsonschema")
    gateways, routes = prod.of_kind("Gateway"), prod.of_kind("GRPCRoute")
    assert len(gateways) == 1 and len(routes) == 1
    for doc in gateways:
        jsonschema.validate(doc, GATEWAY_SCHEMA)
    for doc in routes:
        jsonschema.validate(doc, GRPCROUTE_SCHEMA)


def test_gateway_listener_terminates_tls_for_grpc_routes(prod: Manifests) -> None:
    (gateway,) = prod.of_kind("Gateway")
    for listener in gateway["spec"]["listeners"]:
        # CEL rule of the CRD: an HTTPS listener needs certificates to terminate TLS
        assert listener["protocol"] == "HTTPS"
        assert listener["tls"]["mode"] == "Terminate"
        assert listener["tls"]["certificateRefs"]
        assert {"group": "gateway.networking.k8s.io", "kind": "GRPCRoute"} in listener["allowedRoutes"]["kinds"]


def test_grpcroute_attaches_to_the_gateway_and_reaches_the_gateway_service(prod: Manifests, conventions: Any) -> None:
    (gateway,) = prod.of_kind("Gateway")
    (route,) = prod.of_kind("GRPCRoute")
    listeners = {entry["name"]: entry for entry in gateway["spec"]["listeners"]}
    for ref in route["spec"]["parentRefs"]:
        assert ref["name"] == gateway["metadata"]["name"]
        assert ref.get("sectionName") in listeners
        listener = listeners[ref["sectionName"]]
        assert listener.get("hostname") in route["spec"]["hostnames"]
    gateway_port = conventions.processes["gateway"].grpc_port
    for rule in route["spec"]["rules"]:
        for backend in rule["backendRefs"]:
            assert backend.get("kind", "Service") == "Service"
            service = prod.get("Service", backend["name"])
            assert backend["name"] == "gateway"
            assert backend["port"] == gateway_port
            assert backend["port"] in {p["port"] for p in service["spec"]["ports"]}
            # the Gateway speaks HTTP/2 cleartext to the backend
            (port,) = [p for p in service["spec"]["ports"] if p["port"] == backend["port"]]
            assert port.get("appProtocol") == "kubernetes.io/h2c"


def test_grpcroute_exposes_exactly_the_public_apis() -> None:
    """The route lists the services declared in protos/ (plus health), nothing else (no reflection)."""
    route_services: set[str] = set()
    text = (ROOT / "k8s" / "overlays" / "prod" / "gateway-api.yaml").read_text()
    for doc in yaml.safe_load_all(text):
        if doc and doc["kind"] == "GRPCRoute":
            for rule in doc["spec"]["rules"]:
                for match in rule["matches"]:
                    assert match["method"]["type"] == "Exact"
                    route_services.add(match["method"]["service"])
    declared = set()
    for proto in sorted((ROOT / "protos").glob("pos/*/v1/*.proto")):
        body = proto.read_text()
        package = re.search(r"^package\s+([\w.]+);", body, re.M)
        for service in re.findall(r"^service\s+(\w+)", body, re.M):
            assert package
            declared.add(f"{package.group(1)}.{service}")
    if not declared:
        pytest.skip("no protos with services yet")
    assert route_services == declared | {"grpc.health.v1.Health"}
