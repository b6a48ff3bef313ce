"""Fixtures of the observability tests: the monitoring generator (k8s/components/monitoring/generate.py) as a module,
and the Prometheus tools (promtool, prometheus: Debian's `prometheus` package), skipped locally when missing and
required when CI=true."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

from storeplane_runtime.testing import need

ROOT = Path(__file__).resolve().parents[2]
GENERATOR = ROOT / "k8s" / "components" / "monitoring" / "generate.py"


def load_generator() -> ModuleType:
    if "monitoring_generate" in sys.modules:
        return sys.modules["monitoring_generate"]
    spec = importlib.util.spec_from_file_location("monitoring_generate", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["monitoring_generate"] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def monitoring() -> ModuleType:
    return load_generator()


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        need(name, f"the `{name}` executable is not on PATH (Debian: apt-get install prometheus)")
    assert path is not None
    return path


@pytest.fixture(scope="session")
def promtool() -> str:
    return tool("promtool")


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    return tool("prometheus")
