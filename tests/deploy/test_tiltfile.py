"""The Tiltfile, run by a real Starlark interpreter (starlark-pyo3) against stub Tilt builtins.

The stubs have the parameters of the Tilt API (an unknown keyword fails like in Tilt) and
record every call; `load('ext://restart_process', ...)` gets a stub of that extension with
its checks. The recorded configuration is then checked against the repository and the
rendered dev overlay: images (services/Dockerfile with SERVICE per process), entrypoints,
live-update paths, resources, labels, dependencies and port-forwards.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from deploy_helpers import (
    DB_SERVICES,
    DEV_ISSUER,
    ENVOY_IMAGE,
    PROCESSES,
    ROOT,
    Conventions,
    Manifests,
    all_containers,
    dockerfile_entrypoint,
    dockerfile_stages,
    main_container,
    make_recipe,
    our_containers,
    pod_spec,
    require_module,
    substitute_build_args,
)

TILTFILE = ROOT / "Tiltfile"


@dataclass
class Recorded:
    images: dict[str, dict[str, Any]] = field(default_factory=dict)
    k8s_yaml: list[str] = field(default_factory=list)
    kustomize_paths: list[str] = field(default_factory=list)
    k8s_resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    local_resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    loads: list[str] = field(default_factory=list)
    # what runs while the Tiltfile loads, in order: ("local", command) and ("kustomize", path)
    steps: list[tuple[str, str]] = field(default_factory=list)


def _stubs(rec: Recorded, render_dev: Callable[[str], str]) -> tuple[dict[str, Callable[..., Any]], Callable[..., Any]]:
    def docker_build(
        ref: str,
        context: str,
        build_args: Any = None,
        dockerfile: str = "Dockerfile",
        dockerfile_contents: str = "",
        live_update: Any = None,
        match_in_env_vars: bool = False,
        ignore: Any = None,
        only: Any = None,
        entrypoint: Any = None,
        target: str = "",
        ssh: Any = "",
        network: str = "",
        secret: Any = "",
        extra_tag: Any = "",
        container_args: Any = None,
        cache_from: Any = None,
        pull: bool = False,
        platform: str = "",
        extra_hosts: Any = None,
    ) -> None:
        assert ref not in rec.images, f"image {ref} built twice"
        rec.images[ref] = {
            "context": context,
            "dockerfile": dockerfile,
            "build_args": dict(build_args or {}),
            "live_update": list(live_update or []),
            "only": list(only or []),
            "ignore": list(ignore or []),
            "entrypoint": entrypoint,
            "target": target,
            "restart_file": None,
        }

    def docker_build_with_restart(
        ref: str,
        context: str,
        entrypoint: Any,
        live_update: Any,
        base_suffix: str = "-base",
        restart_file: str = "/.restart-proc",
        trigger: Any = None,
        **kwargs: Any,
    ) -> None:
        # the checks ext://restart_process makes before wrapping docker_build
        assert live_update, "docker_build_with_restart requires at least one live_update step"
        assert all(step.get("type") != "restart_container" for step in live_update)
        assert isinstance(entrypoint, (str, list)), entrypoint
        docker_build(ref, context, entrypoint=entrypoint, live_update=live_update, **kwargs)
        rec.images[ref]["restart_file"] = restart_file
        rec.images[ref]["with_restart"] = True

    def k8s_yaml(yaml: Any, allow_duplicates: bool = False) -> None:
        rec.k8s_yaml.append(yaml)

    def kustomize(pathToDir: str, kustomize_bin: Any = None, flags: Any = None) -> str:  # noqa: N803
        rec.kustomize_paths.append(pathToDir)
        rec.steps.append(("kustomize", pathToDir))
        return render_dev(pathToDir)

    def local(
        command: Any,
        quiet: bool = False,
        command_bat: Any = "",
        echo_off: bool = False,
        env: Any = None,
        dir: str = "",  # noqa: A002
        stdin: Any = None,
    ) -> str:
        rec.steps.append(("local", command if isinstance(command, str) else " ".join(command)))
        return ""

    def k8s_resource(
        workload: str = "",
        new_name: str = "",
        port_forwards: Any = None,
        extra_pod_selectors: Any = None,
        trigger_mode: Any = None,
        resource_deps: Any = None,
        objects: Any = None,
        auto_init: bool = True,
        pod_readiness: str = "",
        links: Any = None,
        labels: Any = None,
        discovery_strategy: str = "",
    ) -> None:
        assert workload, "k8s_resource without a workload"
        assert workload not in rec.k8s_resources, f"k8s_resource({workload}) twice"
        forwards = port_forwards if isinstance(port_forwards, list) else [port_forwards] if port_forwards else []
        rec.k8s_resources[workload] = {
            "port_forwards": forwards,
            "resource_deps": list(resource_deps or []),
            "labels": [labels] if isinstance(labels, str) else list(labels or []),
        }

    def local_resource(
        name: str,
        cmd: Any = "",
        deps: Any = None,
        trigger_mode: Any = None,
        resource_deps: Any = None,
        ignore: Any = None,
        auto_init: bool = True,
        serve_cmd: Any = "",
        cmd_bat: Any = "",
        serve_cmd_bat: Any = "",
        allow_parallel: bool = False,
        links: Any = None,
        tags: Any = None,
        env: Any = None,
        serve_env: Any = None,
        readiness_probe: Any = None,
        dir: str = "",  # noqa: A002
        serve_dir: str = "",
        labels: Any = None,
    ) -> None:
        assert name not in rec.local_resources, f"local_resource({name}) twice"
        rec.local_resources[name] = {
            "cmd": cmd,
            "deps": [deps] if isinstance(deps, str) else list(deps or []),
            "trigger_mode": trigger_mode,
            "resource_deps": list(resource_deps or []),
            "auto_init": auto_init,
            "labels": [labels] if isinstance(labels, str) else list(labels or []),
            "env": dict(env or {}),
        }

    def port_forward(
        local_port: int, container_port: Any = None, name: Any = None, link_path: Any = None, host: Any = None
    ) -> dict[str, Any]:
        return {"local_port": local_port, "container_port": container_port or local_port, "name": name}

    def sync(local_path: str, remote_path: str) -> dict[str, Any]:
        return {"type": "sync", "local": local_path, "remote": remote_path}

    def run(cmd: Any, trigger: Any = None, echo_off: bool = False) -> dict[str, Any]:
        return {"type": "run", "cmd": cmd, "trigger": trigger}

    def fall_back_on(files: Any) -> dict[str, Any]:
        return {"type": "fall_back_on", "files": [files] if isinstance(files, str) else list(files)}

    def restart_container() -> dict[str, Any]:
        return {"type": "restart_container"}

    builtins = {
        "docker_build": docker_build,
        "k8s_yaml": k8s_yaml,
        "kustomize": kustomize,
        "local": local,
        "k8s_resource": k8s_resource,
        "local_resource": local_resource,
        "port_forward": port_forward,
        "sync": sync,
        "run": run,
        "fall_back_on": fall_back_on,
        "restart_container": restart_container,
    }
    return builtins, docker_build_with_restart


@pytest.fixture(scope="module")
def tilt(rendered_text: dict[str, str]) -> Recorded:
    starlark = require_module("starlark")
    rec = Recorded()

    def render_dev(path: str) -> str:
        assert (ROOT / path).is_dir(), path
        assert path == "k8s/overlays/dev", f"Tilt should apply the dev overlay, not {path}"
        return rendered_text["dev"]

    builtins, docker_build_with_restart = _stubs(rec, render_dev)

    def loader(module_id: str) -> Any:
        rec.loads.append(module_id)
        assert module_id == "ext://restart_process", f"unexpected load({module_id!r})"
        ext = starlark.Module()
        ext.add_callable("docker_build_with_restart", docker_build_with_restart)
        return ext.freeze()

    # Tilt runs go-starlark: no f-strings, no type annotations
    dialect = starlark.Dialect.extended()
    dialect.enable_f_strings = False
    dialect.enable_types = starlark.DialectTypes.DISABLE
    ast = starlark.parse("Tiltfile", TILTFILE.read_text(), dialect)
    module = starlark.Module()
    for name, fn in builtins.items():
        module.add_callable(name, fn)
    module["TRIGGER_MODE_AUTO"] = "TRIGGER_MODE_AUTO"
    module["TRIGGER_MODE_MANUAL"] = "TRIGGER_MODE_MANUAL"
    starlark.eval(module, ast, starlark.Globals.standard(), starlark.FileLoader(loader))
    return rec


@pytest.fixture(scope="module")
def dev(manifests: dict[str, Manifests]) -> Manifests:
    return manifests["dev"]


def _steps(image: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [s for s in image["live_update"] if s["type"] == kind]


def test_applies_the_dev_overlay(tilt: Recorded) -> None:
    assert tilt.kustomize_paths == ["k8s/overlays/dev"]
    assert len(tilt.k8s_yaml) == 1
    assert tilt.loads == ["ext://restart_process"]


def _dockerfile(image: dict[str, Any]) -> str:
    """The image's Dockerfile as the builder sees it with the image's build_args."""
    return substitute_build_args((ROOT / image["dockerfile"]).read_text(), image["build_args"])


def test_every_process_has_an_image_built_from_the_one_dockerfile(tilt: Recorded) -> None:
    assert set(tilt.images) == {f"storeplane-{p}" for p in PROCESSES}
    for name in PROCESSES:
        image = tilt.images[f"storeplane-{name}"]
        context = ROOT / image["context"]
        dockerfile = ROOT / image["dockerfile"]
        assert context.resolve() == ROOT, "images build from the repository root"
        assert dockerfile.is_file(), dockerfile
        assert dockerfile.resolve() == (ROOT / "services" / "Dockerfile").resolve()
        assert image["build_args"] == {"SERVICE": name}, "SERVICE picks the process the image runs"
        stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", dockerfile.read_text(), re.M | re.I)
        assert image["target"] in stages, f"{name}: no stage {image['target']!r}"
        # the process of the build arg, not another one, is what the image installs
        builder = dockerfile_stages(_dockerfile(image))["builder"]
        assert any(f"COPY services/{name}/ services/{name}/" == s for s in builder), name
        assert any(f'"storeplane-{name}"' in s and "ln -s" in s for s in builder), name


def test_images_are_the_ones_the_manifests_use(tilt: Recorded, dev: Manifests) -> None:
    used = {c["image"] for d in dev.of_kind("Deployment") for c in all_containers(d)}
    # Envoy runs from the official image, pulled by the cluster; Tilt builds ours
    assert used == set(tilt.images) | {ENVOY_IMAGE}


def test_entrypoint_matches_the_manifest_and_keeps_args(tilt: Recorded, dev: Manifests) -> None:
    """Tilt replaces `command` with the restart wrapper + entrypoint and keeps `args`, so
    the init container still runs `migrate` and the server `serve`."""
    for name in PROCESSES:
        image = tilt.images[f"storeplane-{name}"]
        deployment = dev.get("Deployment", name)
        assert image["with_restart"]
        assert image["entrypoint"] == dockerfile_entrypoint(), f"{name}: the image's own ENTRYPOINT"
        for container in our_containers(deployment):
            assert image["entrypoint"] == container["command"], name
            assert container.get("args"), f"{name}/{container['name']}: args must carry serve/migrate"
        init_args = [c["args"] for c in pod_spec(deployment).get("initContainers", [])]
        if name == "gateway":  # the init container renders Envoy's configuration, the companion serves beside it
            assert init_args == [["render", "/etc/envoy"]]
            assert main_container(deployment)["args"] == ["companion"]
            continue
        assert init_args == ([["migrate"]] if name in DB_SERVICES else [])
        assert main_container(deployment)["args"] == ["serve"]


def test_live_update_paths_exist_and_mirror_the_image_layout(tilt: Recorded) -> None:
    for name in PROCESSES:
        image = tilt.images[f"storeplane-{name}"]
        kinds = [s["type"] for s in image["live_update"]]
        # Tilt requires the order fall_back_on*, sync*, run*
        assert kinds == sorted(kinds, key=["fall_back_on", "sync", "run"].index), kinds
        syncs = {s["local"]: s["remote"] for s in _steps(image, "sync")}
        assert set(syncs) == {"libs", f"services/{name}"}, syncs
        for local, remote in syncs.items():
            assert (ROOT / local).is_dir(), local
            assert remote == f"/app/{local}", "the Dockerfile copies the repo layout under /app"
            assert any(local == o or local.startswith(o.rstrip("/") + "/") for o in image["only"]), local
        fallback = {f for s in _steps(image, "fall_back_on") for f in s["files"]}
        must_rebuild = {"pyproject.toml", "uv.lock", "protos", f"services/{name}/pyproject.toml"}
        if name in DB_SERVICES:
            must_rebuild.add(f"services/{name}/migrations")  # so the migrate init container runs
        assert must_rebuild <= fallback, must_rebuild - fallback
        # the restart file lives where the dev image lets the app user write, outside /tmp
        assert image["restart_file"].startswith(f"/app/services/{name}/"), image["restart_file"]


def test_build_context_holds_everything_the_dockerfile_copies(tilt: Recorded) -> None:
    for name in PROCESSES:
        image = tilt.images[f"storeplane-{name}"]
        dockerfile = _dockerfile(image)
        sources = []
        for line in dockerfile.splitlines():
            if line.startswith("COPY ") and "--from=" not in line:
                args = [a for a in shlex.split(line)[1:] if not a.startswith("--")]
                sources += args[:-1]
        assert sources
        only = [o.rstrip("/") for o in image["only"]]
        for src in sources:
            src = src.rstrip("/")
            assert any(src == o or src.startswith(o + "/") for o in only), f"{name}: {src} not in `only`"


def test_every_process_is_a_labelled_resource(tilt: Recorded, dev: Manifests) -> None:
    deployments = {d["metadata"]["name"] for d in dev.of_kind("Deployment")}
    statefulsets = {d["metadata"]["name"] for d in dev.of_kind("StatefulSet")}
    assert set(tilt.k8s_resources) == deployments | statefulsets
    assert tilt.k8s_resources["gateway"]["labels"] == ["gateway"]
    for name in DB_SERVICES:
        resource = tilt.k8s_resources[name]
        assert resource["labels"] == ["services"]
        assert {"postgres", "rabbitmq"} <= set(resource["resource_deps"]), name
    for name in ("postgres", "rabbitmq"):
        assert tilt.k8s_resources[name]["labels"] == ["infra"]


def test_resource_deps_name_real_resources(tilt: Recorded) -> None:
    known = set(tilt.k8s_resources) | set(tilt.local_resources)
    for name, resource in [*tilt.k8s_resources.items(), *tilt.local_resources.items()]:
        unknown = set(resource["resource_deps"]) - known
        assert not unknown, f"{name}: {unknown}"


def test_port_forwards(tilt: Recorded, dev: Manifests, conventions: Conventions) -> None:
    def forwards(resource: str) -> dict[int, int]:
        return {f["local_port"]: f["container_port"] for f in tilt.k8s_resources[resource]["port_forwards"]}

    gateway_port = conventions.processes["gateway"].grpc_port
    assert forwards("gateway") == {50050: gateway_port}
    rabbit = pod_spec(dev.get("StatefulSet", "rabbitmq"))["containers"][0]
    management = {p["name"]: p["containerPort"] for p in rabbit["ports"]}["management"]
    assert forwards("rabbitmq").get(15672) == management


def test_protos_are_regenerated_locally(tilt: Recorded) -> None:
    protos = tilt.local_resources["protos"]
    assert "scripts/gen_protos.py" in protos["cmd"]
    assert "protos" in protos["deps"]


def test_seed_and_demo_button(tilt: Recorded) -> None:
    buttons = {
        name: r
        for name, r in tilt.local_resources.items()
        if "storeplane seed" in str(r["cmd"]) or "storeplane demo" in str(r["cmd"])
    }
    seed_and_demo = [
        r
        for r in buttons.values()
        if "storeplane seed --gateway localhost:50050" in r["cmd"]
        and "storeplane demo --gateway localhost:50050" in r["cmd"]
    ]
    assert seed_and_demo, "a resource that seeds and rings up a demo sale"
    for name, resource in buttons.items():
        assert resource["cmd"].startswith("uv run storeplane "), name
        assert resource["trigger_mode"] == "TRIGGER_MODE_MANUAL" and resource["auto_init"] is False, name
        assert "gateway" in resource["resource_deps"], name


def test_the_development_issuer_is_made_before_the_overlay_is_rendered(tilt: Recorded) -> None:
    """The dev overlay's configMapGenerator reads the issuer's jwks.json: `make dev-issuer` runs first, and that
    target makes the key pair where the overlay and the buttons look (its private key never leaves the machine)."""
    kinds = [kind for kind, _ in tilt.steps]
    assert "local" in kinds and kinds.index("local") < kinds.index("kustomize"), tilt.steps
    assert any(kind == "local" and re.search(r"\bmake\b.*\bdev-issuer\b", cmd) for kind, cmd in tilt.steps)
    [keys] = [line for line in make_recipe("dev-issuer") if "storeplane keys" in line]
    assert f"--data-dir {DEV_ISSUER}" in keys
    buttons = [
        r for r in tilt.local_resources.values() if "storeplane seed" in r["cmd"] or "storeplane demo" in r["cmd"]
    ]
    assert buttons and all(r["env"].get("DATA_DIR") == DEV_ISSUER for r in buttons), "their tokens' keys"


def test_every_resource_is_grouped(tilt: Recorded) -> None:
    for name, resource in [*tilt.k8s_resources.items(), *tilt.local_resources.items()]:
        assert resource["labels"], f"{name} has no label"


def test_tiltfile_exists_where_tilt_looks() -> None:
    assert TILTFILE.is_file()
    assert Path(ROOT / "k8s" / "overlays" / "dev" / "kustomization.yaml").is_file()


def test_traces_metrics_and_the_dashboard_are_port_forwarded(tilt: Recorded, dev: Manifests) -> None:
    """`tilt up` shows traces (Jaeger), Prometheus and the Grafana dashboard without further setup."""

    def forwards(resource: str) -> dict[int, int]:
        return {f["local_port"]: f["container_port"] for f in tilt.k8s_resources[resource]["port_forwards"]}

    def port(workload: str, name: str) -> int:
        [container] = pod_spec(dev.get("StatefulSet", workload))["containers"]
        return {p["name"]: p["containerPort"] for p in container["ports"]}[name]

    assert forwards("jaeger") == {16686: port("jaeger", "ui")}
    assert forwards("prometheus") == {9090: port("prometheus", "web")}
    assert forwards("grafana") == {3000: port("grafana", "web")}
    for name in ("otel-collector", "jaeger", "prometheus", "grafana"):
        assert tilt.k8s_resources[name]["labels"] == ["observability"], name
