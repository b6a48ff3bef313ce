"""The kit's chosen public API: what services import from `storeplane_runtime` is listed in a public module's
`__all__`, so the kit can change anything else without breaking a service."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import storeplane_runtime

ROOT = Path(__file__).parents[3]
SERVICE_SOURCES = sorted(p for p in ROOT.glob("services/*/src/**/*.py") if "_pb2" not in p.name)


@pytest.mark.parametrize("name", storeplane_runtime.__all__)
def test_every_public_module_lists_what_it_offers(name: str) -> None:
    module = importlib.import_module(f"storeplane_runtime.{name}")
    offered = getattr(module, "__all__", None)
    assert offered, f"storeplane_runtime.{name} has no __all__"
    missing = [n for n in offered if not hasattr(module, n)]
    assert not missing, f"storeplane_runtime.{name}.__all__ names what it lacks: {missing}"


def _kit_imports(path: Path) -> list[tuple[str, str, int]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("storeplane_runtime"):
            found.extend((node.module, alias.name, node.lineno) for alias in node.names)
    return found


def test_services_import_only_the_public_api() -> None:
    wrong = []
    for path in SERVICE_SOURCES:
        for module_name, name, line in _kit_imports(path):
            where = f"{path.relative_to(ROOT)}:{line}"
            if module_name == "storeplane_runtime":
                if name not in storeplane_runtime.__all__:
                    wrong.append(f"{where}: storeplane_runtime.{name} is not a public module")
                continue
            top = module_name.split(".")[1]
            if top not in storeplane_runtime.__all__:
                wrong.append(f"{where}: {module_name} is the kit's own machinery")
                continue
            module = importlib.import_module(module_name)
            if name not in getattr(module, "__all__", ()):
                wrong.append(f"{where}: {module_name}.{name} is not in its __all__")
    assert not wrong, "\n".join(wrong)
