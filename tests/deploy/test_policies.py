"""Policy checks over the rendered manifests (k8s/overlays/dev and k8s/overlays/prod).

Security context, probes, resources, ports and settings against docs/conventions.md,
migrations before start, shutdown timing, prod availability (HPA, PDB, spreading), and
the dev credentials wiring (PostgreSQL databases, RabbitMQ users and permissions).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from typing import Any
from urllib.parse import urlsplit

import pytest
from deploy_helpers import (
    DB_SERVICES,
    ENVOY_IMAGE,
    OVERLAYS,
    PROCESSES,
    ROOT,
    Conventions,
    Manifests,
    all_containers,
    dockerfile_entrypoint,
    image_repository,
    main_container,
    our_containers,
    pod_spec,
    serving_container,
)

GRPC_SERVICE = {
    "checkout": "pos.checkout.v1.CheckoutService",
    "stock": "pos.stock.v1.StockService",
    "customer": "pos.customer.v1.CustomerService",
    "loyalty": "pos.loyalty.v1.LoyaltyService",
}


# Services whose list RPCs hand out page tokens (storeplane_runtime.paging).
PAGE_TOKEN_SERVICES = {"checkout", "loyalty"}


def _quantity(value: str | int) -> float:
    text = str(value)
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9}
    for suffix, factor in sorted(units.items(), key=lambda kv: -len(kv[0])):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def _deployments(m: Manifests) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in m.of_kind("Deployment")}


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        present, value = expr["key"] in labels, labels.get(expr["key"])
        op = expr["operator"]
        if (op == "In" and value not in expr["values"]) or (op == "NotIn" and value in expr["values"]):
            return False
        if (op == "Exists" and not present) or (op == "DoesNotExist" and present):
            return False
    return True


# --- every workload, every container --------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_are_locked_down(manifests: dict[str, Manifests], overlay: str) -> None:
    for workload in manifests[overlay].workloads():
        name = f"{overlay}: {workload['kind']}/{workload['metadata']['name']}"
        spec = pod_spec(workload)
        pod_sc = spec.get("securityContext", {})
        assert spec.get("automountServiceAccountToken") is False, name
        for flag in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(flag), name
        for container in all_containers(workload):
            where = f"{name} container {container['name']}"
            sc = container.get("securityContext", {})
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("privileged") in (None, False), where
            assert "ALL" in sc.get("capabilities", {}).get("drop", []), where
            assert not sc.get("capabilities", {}).get("add"), where
            assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, where
            assert (sc.get("runAsUser", pod_sc.get("runAsUser")) or 0) != 0, where
            seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
            assert seccomp.get("type") == "RuntimeDefault", where
            read_only = sc.get("readOnlyRootFilesystem") is True
            dev_server = (
                overlay == "dev"
                and workload["kind"] == "Deployment"
                and workload["metadata"]["name"] in PROCESSES
                and container is main_container(workload)
            )
            # Only exception: Tilt live update writes into the dev server containers.
            assert read_only or dev_server, f"{where}: readOnlyRootFilesystem"
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{where}: needs a writable /tmp"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_tmp_is_an_emptydir(manifests: dict[str, Manifests], overlay: str) -> None:
    for workload in manifests[overlay].workloads():
        volumes = {v["name"]: v for v in pod_spec(workload).get("volumes", [])}
        for container in all_containers(workload):
            for mount in container.get("volumeMounts", []):
                if mount["mountPath"] == "/tmp":
                    assert "emptyDir" in volumes[mount["name"]], workload["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_requests_and_limits(manifests: dict[str, Manifests], overlay: str) -> None:
    for workload in manifests[overlay].workloads():
        for container in all_containers(workload):
            where = f"{overlay}: {workload['metadata']['name']}/{container['name']}"
            res = container.get("resources", {})
            for kind in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    assert resource in res.get(kind, {}), f"{where}: {kind}.{resource}"
            for resource in ("cpu", "memory"):
                assert _quantity(res["requests"][resource]) <= _quantity(res["limits"][resource]), where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_probes(manifests: dict[str, Manifests], overlay: str) -> None:
    for workload in manifests[overlay].workloads():
        for container in pod_spec(workload)["containers"]:
            where = f"{overlay}: {workload['metadata']['name']}/{container['name']}"
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert probe in container, f"{where}: {probe}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_floating_images(manifests: dict[str, Manifests], overlay: str) -> None:
    for workload in manifests[overlay].workloads():
        for container in all_containers(workload):
            assert not container["image"].endswith(":latest"), container["image"]


# --- the five storeplane processes -----------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ports_and_settings_match_the_conventions(
    manifests: dict[str, Manifests], conventions: Conventions, overlay: str
) -> None:
    m = manifests[overlay]
    for name, deployment in _deployments(m).items():
        proc = conventions.processes[name]
        container = main_container(deployment)
        serving = serving_container(deployment)
        ports = {p["name"]: p["containerPort"] for p in serving["ports"]}
        assert ports == {"grpc": proc.grpc_port, "metrics": proc.metrics_port}, name
        if serving is not container:  # the gateway's companion listens on loopback only: no port of the pod
            assert not container.get("ports"), name

        settings = m.configmap_data(deployment, container)
        assert settings["GRPC_PORT"] == str(proc.grpc_port), name
        assert settings["METRICS_PORT"] == str(proc.metrics_port), name
        assert settings.get("GRPC_HOST", "0.0.0.0") == "0.0.0.0", name
        undocumented = [k for k in settings if not conventions.documented(k)]
        if name == "gateway":
            # The edge's own settings (Envoy's loopback ports, rate limits, CORS) are not all in conventions.md
            # yet: each must at least be a setting the gateway reads.
            from gateway.settings import Settings

            undocumented = [k for k in undocumented if k.lower() not in Settings.model_fields]
        assert not undocumented, f"{name}: settings not in docs/conventions.md: {undocumented}"
        env_names = [e["name"] for e in container.get("env", [])]
        assert all(conventions.documented(e) for e in env_names), env_names

        # peers: host:port of a Service that exists and listens on the conventional port
        for peer in DB_SERVICES:
            addr = settings.get(f"{peer.upper()}_ADDR")
            if name == "gateway" or addr is not None:
                assert addr == f"{peer}:{conventions.processes[peer].grpc_port}", f"{name}: {peer}"
                service = m.get("Service", peer)
                assert conventions.processes[peer].grpc_port in {p["port"] for p in service["spec"]["ports"]}

        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(proc.metrics_port)
        assert annotations.get("prometheus.io/path", "/metrics") == "/metrics"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_route_to_the_grpc_port(
    manifests: dict[str, Manifests], conventions: Conventions, overlay: str
) -> None:
    m = manifests[overlay]
    for name, deployment in _deployments(m).items():
        service = m.get("Service", name)
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert _selects({"matchLabels": service["spec"]["selector"]}, pod_labels), name
        (port,) = service["spec"]["ports"]
        assert port["port"] == conventions.processes[name].grpc_port
        assert port["targetPort"] == "grpc"
        assert port.get("appProtocol") == "kubernetes.io/h2c"
        account = m.get("ServiceAccount", pod_spec(deployment)["serviceAccountName"])
        assert account.get("automountServiceAccountToken") is False


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_native_grpc_probes(manifests: dict[str, Manifests], conventions: Conventions, overlay: str) -> None:
    for name, deployment in _deployments(manifests[overlay]).items():
        container = serving_container(deployment)
        port = conventions.processes[name].grpc_port
        if name == "gateway":
            # Envoy: started = its listener is bound; alive = it answers HTTP on the metrics port; neither asks the
            # backends (a service that is down must not restart Envoy). Ready = grpc.health.v1 "" through Envoy,
            # answered by the companion: SERVING while every backend is.
            assert container["startupProbe"]["tcpSocket"]["port"] == port
            metrics = {p["name"]: p["containerPort"] for p in container["ports"]}["metrics"]
            live = container["livenessProbe"]["httpGet"]
            assert live["port"] == metrics and live["path"].startswith("/metrics"), live
            assert container["readinessProbe"]["grpc"] == {"port": port}
            continue
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == port, f"{name} {probe}"
        # liveness: the process as a whole; readiness: the API it serves (grpc.health.v1 names)
        assert container["livenessProbe"]["grpc"].get("service", "") == ""
        expected = GRPC_SERVICE.get(name, "")
        assert container["readinessProbe"]["grpc"].get("service", "") == expected, name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_graceful_shutdown_timing(manifests: dict[str, Manifests], overlay: str) -> None:
    m = manifests[overlay]
    for name, deployment in _deployments(m).items():
        container = main_container(deployment)
        pause = serving_container(deployment)["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert pause >= 3, f"{name}: preStop pause too short for endpoints to drain"
        grace = float(m.configmap_data(deployment, container).get("SHUTDOWN_GRACE_SECONDS", "10"))
        termination = pod_spec(deployment).get("terminationGracePeriodSeconds", 30)
        assert termination > pause + grace, f"{name}: {termination} <= {pause} + {grace}"
        if name == "gateway":  # Envoy exits at SIGTERM, after its pause: it must outlast the companion's drain
            companion = container["lifecycle"]["preStop"]["exec"]["command"][-1]
            assert "/drain_listeners?graceful" in companion and "time.sleep(5)" in companion
            assert pause > 5 and termination > 5 + grace


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_commands_and_migrations_before_start(
    manifests: dict[str, Manifests], conventions: Conventions, overlay: str
) -> None:
    m = manifests[overlay]
    for name, deployment in _deployments(m).items():
        proc = conventions.processes[name]
        spec = pod_spec(deployment)
        container = main_container(deployment)
        # the image's ENTRYPOINT: the console script storeplane-<name>, linked at a fixed path
        assert container["command"] == dockerfile_entrypoint(), name
        assert spec.get("enableServiceLinks") is False, name
        secret_env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container.get("env", []) if "valueFrom" in e}
        if not proc.has_db:
            assert container["args"] == ["companion"], "the gateway's Python process is Envoy's companion"
            (init,) = spec["initContainers"]
            assert init["name"] == "render-envoy-config", "no migrate: the gateway has no database"
            assert (init["image"], init["command"]) == (container["image"], container["command"])
            assert m.configmap_data(deployment, init) == m.configmap_data(deployment, container)
            for c in our_containers(deployment):
                refs = [e for e in c.get("env", []) if "valueFrom" in e]
                assert not refs, "the gateway needs no database or broker credentials"
            continue
        assert container.get("args", ["serve"]) == ["serve"]
        # Services with list RPCs also sign page tokens with a key every replica shares.
        page_token_key = {"PAGE_TOKEN_KEY"} if name in PAGE_TOKEN_SERVICES else set()
        assert set(secret_env) == {"DATABASE_URL", "AMQP_URL"} | page_token_key, name
        (init,) = spec["initContainers"]
        assert init["name"] == "migrate"
        assert init["image"] == container["image"], "migrations must come from the image that serves"
        assert init["command"] == container["command"]
        assert init["args"] == ["migrate"]
        init_secret = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in init.get("env", []) if "valueFrom" in e}
        assert init_secret["DATABASE_URL"] == secret_env["DATABASE_URL"], name
        settings = m.configmap_data(deployment, container)
        assert settings["AUTO_MIGRATE"] == "false", f"{name}: migrations run first, not at start"
        assert m.configmap_data(deployment, init) == settings
        # a rollout adds one new pod at a time and never drops below the wanted count
        rolling = deployment["spec"]["strategy"]["rollingUpdate"]
        assert rolling == {"maxSurge": 1, "maxUnavailable": 0}, name


# --- prod --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prod(manifests: dict[str, Manifests]) -> Manifests:
    return manifests["prod"]


@pytest.fixture(scope="module")
def dev(manifests: dict[str, Manifests]) -> Manifests:
    return manifests["dev"]


def test_prod_every_deployment_has_a_pdb_and_an_hpa(prod: Manifests) -> None:
    pdbs, hpas = prod.of_kind("PodDisruptionBudget"), prod.of_kind("HorizontalPodAutoscaler")
    for name, deployment in _deployments(prod).items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        covering = [p for p in pdbs if _selects(p["spec"]["selector"], labels)]
        assert len(covering) == 1, f"{name}: PodDisruptionBudgets {len(covering)}"
        pdb = covering[0]["spec"]
        assert pdb.get("maxUnavailable") == 1 or int(pdb.get("minAvailable", 0)) >= 1
        scalers = [
            h
            for h in hpas
            if h["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        ]
        assert len(scalers) == 1, f"{name}: HorizontalPodAutoscalers {len(scalers)}"
        hpa = scalers[0]["spec"]
        assert hpa["minReplicas"] >= 2 and hpa["maxReplicas"] >= hpa["minReplicas"], name
        # the HPA owns the replica count; a fixed one in the manifest would fight it on every apply
        assert deployment["spec"].get("replicas", hpa["minReplicas"]) >= 2, name
        assert "replicas" not in deployment["spec"], f"{name}: leave replicas to the HPA"


def test_prod_pods_spread_over_nodes_and_zones(prod: Manifests) -> None:
    for name, deployment in _deployments(prod).items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        constraints = {c["topologyKey"]: c for c in pod_spec(deployment).get("topologySpreadConstraints", [])}
        assert {"kubernetes.io/hostname", "topology.kubernetes.io/zone"} <= set(constraints), name
        for constraint in constraints.values():
            assert _selects(constraint["labelSelector"], labels), name
            assert constraint["maxSkew"] == 1


def test_prod_images_are_released_builds(prod: Manifests) -> None:
    for name, deployment in _deployments(prod).items():
        for container in all_containers(deployment):
            image = container["image"]
            if name == "gateway" and container["name"] == "envoy":
                assert image.startswith(ENVOY_IMAGE), image  # the official image, pinned (tag, or tag@digest)
                continue
            assert image_repository(image) == f"storeplane-{name}", image
            assert "/" in image.split(":", 1)[0], f"{image}: no registry"
            tagged = re.search(r":[\w][\w.-]*$", image.split("@", 1)[0].rsplit("/", 1)[-1])
            assert "@sha256:" in image or (tagged and not image.endswith(":latest")), image


def test_prod_has_no_secrets_and_no_in_cluster_database(prod: Manifests) -> None:
    assert not prod.of_kind("Secret"), "production secrets are created out of band, never committed"
    assert not prod.of_kind("StatefulSet"), "production uses external PostgreSQL and RabbitMQ"


def test_prod_secrets_are_documented(prod: Manifests) -> None:
    """Every Secret the manifests need is named in docs/kubernetes.md, with its keys."""
    doc = (ROOT / "docs" / "kubernetes.md").read_text()
    for deployment in prod.of_kind("Deployment"):
        for container in all_containers(deployment):
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] in doc and ref["key"] in doc, ref
    for gateway in prod.of_kind("Gateway"):
        for listener in gateway["spec"]["listeners"]:
            for cert in listener.get("tls", {}).get("certificateRefs", []):
                assert cert["name"] in doc


# --- dev ----------------------------------------------------------------------------------


def _secret(m: Manifests, name: str) -> dict[str, str]:
    secret = m.get("Secret", name)
    return {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}


def test_dev_runs_one_replica_each_with_infra_statefulsets(dev: Manifests) -> None:
    for workload in dev.workloads():
        assert workload["spec"].get("replicas") == 1, workload["metadata"]["name"]
    for name in ("postgres", "rabbitmq"):
        sts = dev.get("StatefulSet", name)
        claims = {c["metadata"]["name"] for c in sts["spec"].get("volumeClaimTemplates", [])}
        assert claims, f"{name}: needs a persistent volume"
        mounted = {m["name"] for c in pod_spec(sts)["containers"] for m in c.get("volumeMounts", [])}
        assert claims <= mounted, name
        assert dev.get("Service", name)


def test_dev_images_are_the_ones_tilt_builds(dev: Manifests) -> None:
    for name, deployment in _deployments(dev).items():
        for container in all_containers(deployment):
            if name == "gateway" and container["name"] == "envoy":
                assert container["image"].startswith(ENVOY_IMAGE), container["image"]  # pulled, not built
                continue
            assert container["image"] == f"storeplane-{name}", container["image"]


def test_dev_every_referenced_config_exists(dev: Manifests) -> None:
    names = {(d["kind"], d["metadata"]["name"]) for d in dev.docs}
    for workload in dev.workloads():
        spec = pod_spec(workload)
        refs: list[tuple[str, str]] = []
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                refs.append(("ConfigMap", volume["configMap"]["name"]))
            if "secret" in volume:
                refs.append(("Secret", volume["secret"]["secretName"]))
        for container in all_containers(workload):
            for src in container.get("envFrom", []):
                if "configMapRef" in src:
                    refs.append(("ConfigMap", src["configMapRef"]["name"]))
                if "secretRef" in src:
                    refs.append(("Secret", src["secretRef"]["name"]))
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    refs.append(("Secret", ref["name"]))
                    assert ref["key"] in dev.get("Secret", ref["name"])["data"], ref
        for ref in refs:
            assert ref in names, f"{workload['metadata']['name']}: missing {ref}"


def test_dev_database_urls_match_the_postgres_init(dev: Manifests) -> None:
    credentials = _secret(dev, _env_from_secret(dev, "postgres"))
    script = (ROOT / "k8s" / "overlays" / "dev" / "postgres" / "10-create-databases.sh").read_text()
    (loop,) = re.findall(r"^for svc in ([\w ]+); do", script, re.M)
    assert set(loop.split()) == set(DB_SERVICES)
    for name in DB_SERVICES:
        deployment = dev.get("Deployment", name)
        env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in main_container(deployment)["env"]}
        url = urlsplit(_secret(dev, env["DATABASE_URL"]["name"])["DATABASE_URL"])
        assert url.scheme == "postgresql+psycopg"
        assert (url.hostname, url.port) == ("postgres", 5432)
        assert url.username == name and url.path == f"/{name}", "one database and one role per service"
        assert url.password == credentials[f"{name.upper()}_DB_PASSWORD"], name
        assert 5432 in {p["port"] for p in dev.get("Service", "postgres")["spec"]["ports"]}


def _env_from_secret(m: Manifests, workload: str) -> str:
    (container,) = pod_spec(m.get("StatefulSet", workload))["containers"]
    (ref,) = [src["secretRef"]["name"] for src in container.get("envFrom", []) if "secretRef" in src]
    return ref


def _rabbit_hash_matches(password_hash: str, password: str) -> bool:
    raw = base64.b64decode(password_hash)
    salt, digest = raw[:4], raw[4:]
    return hashlib.sha256(salt + password.encode()).digest() == digest


@pytest.fixture(scope="module")
def rabbit_definitions(dev: Manifests) -> dict[str, Any]:
    sts = dev.get("StatefulSet", "rabbitmq")
    (container,) = pod_spec(sts)["containers"]
    volumes = {v["name"]: v for v in pod_spec(sts)["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    # the config file that rabbitmq reads names the definitions file that is mounted
    conf_mount = mounts["/etc/rabbitmq/conf.d/20-storeplane.conf"]
    conf_map = dev.get("ConfigMap", volumes[conf_mount["name"]]["configMap"]["name"])
    conf = conf_map["data"][conf_mount["subPath"]]
    (path,) = re.findall(r"^load_definitions\s*=\s*(\S+)$", conf, re.M)
    directory, filename = path.rsplit("/", 1)
    secret_name = volumes[mounts[directory]["name"]]["secret"]["secretName"]
    return json.loads(_secret(dev, secret_name)[filename])


def test_dev_rabbitmq_users_match_the_amqp_urls(dev: Manifests, rabbit_definitions: dict[str, Any]) -> None:
    users = {u["name"]: u for u in rabbit_definitions["users"]}
    assert set(users) == {"admin", *DB_SERVICES}, "one user per service (none for the gateway) and an admin"
    assert {v["name"] for v in rabbit_definitions["vhosts"]} == {"storeplane"}
    for name in DB_SERVICES:
        env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in main_container(dev.get("Deployment", name))["env"]}
        url = urlsplit(_secret(dev, env["AMQP_URL"]["name"])["AMQP_URL"])
        assert url.scheme == "amqp" and (url.hostname, url.port) == ("rabbitmq", 5672)
        assert url.path == "/storeplane" and url.username == name
        user = users[name]
        assert user["hashing_algorithm"] == "rabbit_password_hashing_sha256"
        assert _rabbit_hash_matches(user["password_hash"], url.password or ""), name
        assert not user["tags"], f"{name}: service users get no management tags"


def test_dev_rabbitmq_permissions_are_limited_to_own_queues(rabbit_definitions: dict[str, Any]) -> None:
    perms = {(p["user"], p["vhost"]): p for p in rabbit_definitions["permissions"]}
    for name in DB_SERVICES:
        perm = perms[(name, "storeplane")]
        own = [f"{name}.events", f"{name}.events.retry.1", f"{name}.events.retry.30s", f"{name}.events.parked"]
        others = [f"{o}.events{suffix}" for o in DB_SERVICES if o != name for suffix in ("", ".parked")]
        for kind in ("configure", "write", "read"):
            pattern = re.compile(perm[kind])
            for queue in own:
                assert pattern.search(queue), f"{name} {kind} {queue}"
            for queue in [*others, "amq.default", "other"]:
                assert not pattern.search(queue), f"{name} may {kind} {queue}"
            # publishing to, binding from and declaring the shared exchange
            assert pattern.search("pos.events"), f"{name} {kind} pos.events"
    assert ("gateway", "storeplane") not in perms


def test_dev_postgres_init_and_broker_config_are_mounted(dev: Manifests) -> None:
    sts = dev.get("StatefulSet", "postgres")
    (container,) = pod_spec(sts)["containers"]
    volumes = {v["name"]: v for v in pod_spec(sts)["volumes"]}
    (initdb,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/docker-entrypoint-initdb.d"]
    config_map = dev.get("ConfigMap", volumes[initdb["name"]]["configMap"]["name"])
    assert "10-create-databases.sh" in config_map["data"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["PGDATA"].startswith("/var/lib/postgresql/data/")
