"""Helpers shared by the deployment tests (imported by conftest.py and the test modules)."""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OVERLAYS = ("dev", "prod")
PROCESSES = ("gateway", "checkout", "stock", "customer", "loyalty")
DB_SERVICES = ("checkout", "stock", "customer", "loyalty")
# The one image definition of every process, parameterised by the build argument SERVICE.
DOCKERFILE = ROOT / "services" / "Dockerfile"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def missing(what: str) -> None:
    """Skip locally, fail in CI: a deploy check must never silently vanish from the pipeline."""
    if in_ci():
        pytest.fail(f"{what} is required when CI=true", pytrace=False)
    pytest.skip(f"{what} not available")


def find_tool(name: str) -> str | None:
    venv_bin = Path(sys.executable).parent / name
    if venv_bin.is_file() and os.access(venv_bin, os.X_OK):
        return str(venv_bin)
    return shutil.which(name)


def require_module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        missing(f"the Python module `{name}`")
        raise


def require_tool(name: str) -> str:
    path = find_tool(name)
    if path is None:
        missing(f"the `{name}` executable")
    assert path is not None
    return path


@dataclass(frozen=True)
class Process:
    name: str
    package: str
    grpc_port: int
    metrics_port: int
    has_db: bool


@dataclass(frozen=True)
class Conventions:
    processes: dict[str, Process]
    variables: frozenset[str]
    variable_prefixes: frozenset[str]

    def documented(self, variable: str) -> bool:
        return variable in self.variables or any(variable.startswith(p) for p in self.variable_prefixes)


def parse_conventions(text: str) -> Conventions:
    """The process table (ports) and the environment table (variable names) of docs/conventions.md."""
    processes: dict[str, Process] = {}
    row = re.compile(r"^\|\s*(\w+)\s*\|\s*`(\w+)`\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*(.+?)\s*\|\s*$")
    for line in text.splitlines():
        m = row.match(line)
        if m:
            name, package, grpc, metrics, db = m.groups()
            processes[name] = Process(name, package, int(grpc), int(metrics), db.strip() != "none")
    variables: set[str] = set()
    prefixes: set[str] = set()
    env_section = text.split("## Environment", 1)[1].split("\n## ", 1)[0]
    for line in env_section.splitlines():
        if not line.startswith("| `"):
            continue
        first_cell = line.split("|")[1]
        for name in re.findall(r"`([A-Z0-9_*]+)`", first_cell):
            if name.endswith("*"):
                prefixes.add(name.rstrip("*"))
            else:
                variables.add(name)
    return Conventions(processes, frozenset(variables), frozenset(prefixes))


def render(kubectl: str, path: Path, root: Path = ROOT) -> str:
    """`kubectl kustomize` of `path`, a directory of the repository or of a copy of it at `root`."""
    proc = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, f"kubectl kustomize {path.relative_to(root)} failed:\n{proc.stderr}"
    return proc.stdout


# The dev overlay's development issuer: `make dev-issuer` makes its key pair here (git-ignored), the overlay ships
# its jwks.json (a file on each machine, so the tests render a copy of k8s/ in which they made it the same way).
DEV_ISSUER = "k8s/overlays/dev/issuer"
MAKEFILE = ROOT / "Makefile"


def make_recipe(target: str) -> list[str]:
    """The command lines of a Makefile target (tab-indented lines after `target:`)."""
    lines = MAKEFILE.read_text().splitlines()
    heads = [i for i, line in enumerate(lines) if re.match(rf"^{re.escape(target)}\s*:", line)]
    assert len(heads) == 1, f"Makefile: no single rule for {target}"
    recipe = []
    for line in lines[heads[0] + 1 :]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip().lstrip("@"))
    return recipe


def make_dev_issuer(root: Path) -> None:
    """What `make dev-issuer` does, in a copy of the repository at `root`: the `storeplane` command of its recipe,
    run from there."""
    [command] = [line for line in make_recipe("dev-issuer") if " storeplane " in f" {line} "]
    argv = command.split(" storeplane ", 1)[1].split(">", 1)[0].split()
    subprocess.run(
        [sys.executable, "-m", "storeplane_cli", *argv], cwd=root, check=True, capture_output=True, timeout=60
    )


class Manifests:
    """Lookup helpers over one rendered overlay."""

    def __init__(self, docs: list[dict[str, Any]]) -> None:
        self.docs = docs

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [d for d in self.of_kind(kind) if d["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
        return found[0]

    def find(self, kind: str, name: str) -> dict[str, Any] | None:
        found = [d for d in self.of_kind(kind) if d["metadata"]["name"] == name]
        return found[0] if found else None

    def workloads(self) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}]

    def configmap_data(self, deployment: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
        data: dict[str, str] = {}
        for src in container.get("envFrom", []):
            if "configMapRef" in src:
                data.update(self.get("ConfigMap", src["configMapRef"]["name"]).get("data", {}))
        return data


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def all_containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


# The gateway pod: Envoy of the official image serves the gateway's ports; the companion beside it is our process
# (the settings, the issuer's keys), and the init container renders Envoy's configuration from the same settings.
ENVOY_IMAGE = "envoyproxy/envoy:v1.40.0"
EDGE_INIT = "render-envoy-config"
EDGE_CONTAINERS = ("envoy", "companion")


def main_container(deployment: dict[str, Any]) -> dict[str, Any]:
    """The container of our process: the one named after the Deployment (the gateway's: the companion)."""
    name = deployment["metadata"]["name"]
    wanted = "companion" if name == "gateway" else name
    found = [c for c in pod_spec(deployment)["containers"] if c["name"] == wanted]
    assert len(found) == 1, f"{name}: expected one container named {wanted}"
    return found[0]


def serving_container(deployment: dict[str, Any]) -> dict[str, Any]:
    """The container that serves the process's gRPC and metrics ports (the gateway's: Envoy)."""
    if deployment["metadata"]["name"] != "gateway":
        return main_container(deployment)
    (envoy,) = [c for c in pod_spec(deployment)["containers"] if c["name"] == "envoy"]
    return envoy


def our_containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    """Every container (init ones too) that runs one of our images, not a third party's (Envoy)."""
    return [c for c in all_containers(workload) if image_repository(c["image"]).startswith("storeplane-")]


def image_repository(image: str) -> str:
    """`registry.example.com/x/storeplane-stock:1.2@sha256:...` -> `storeplane-stock`."""
    image = image.split("@", 1)[0]
    last = image.rsplit("/", 1)[-1]
    return last.split(":", 1)[0]


# --- services/Dockerfile ------------------------------------------------------------------


def substitute_build_args(text: str, build_args: dict[str, str]) -> str:
    """What the builder does with `--build-arg K=V`: `${K}` and `$K` become V (in RUN the
    shell expands them the same way, since ARGs are in its environment)."""
    for key, value in build_args.items():
        text = re.sub(rf"\$\{{{key}\}}|\${key}\b", lambda _m, v=value: v, text)
    return text


def dockerfile_stages(text: str) -> dict[str, list[str]]:
    """Instructions per stage name, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    stages: dict[str, list[str]] = {}
    current = None
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"FROM\s+\S+(?:\s+AS\s+(\S+))?", line, re.I)
        if m:
            current = m.group(1) or f"stage{len(stages)}"
            stages[current] = []
        elif current is not None:
            stages[current].append(line)
    return stages


def dockerfile_for(service: str) -> str:
    """services/Dockerfile as the builder sees it with `--build-arg SERVICE=<service>`."""
    return substitute_build_args(DOCKERFILE.read_text(), {"SERVICE": service})


def dockerfile_entrypoint() -> list[str]:
    """The exec-form ENTRYPOINT of the images (the same for every process)."""
    entrypoints = [s for s in dockerfile_stages(DOCKERFILE.read_text())["base"] if s.startswith("ENTRYPOINT")]
    assert len(entrypoints) == 1, entrypoints
    value = json.loads(entrypoints[0].split(" ", 1)[1])
    assert isinstance(value, list), "exec form: a JSON array, no shell"
    return value
