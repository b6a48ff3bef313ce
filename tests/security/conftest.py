"""The four services and the gateway in this process, each on a free port with its own SQLite database, checking
tokens of the test authority; plus the forged and restricted tokens the security tests call with."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from storeplane_runtime.app import ServiceApp
from storeplane_runtime.testing import service_settings, test_authority

SERVICES = ("checkout", "stock", "customer", "loyalty")


@dataclass
class Stack:
    apps: dict[str, ServiceApp]
    ports: dict[str, int]
    stopped: set[str] = field(default_factory=set)

    def address(self, process: str) -> str:
        return f"127.0.0.1:{self.ports[process]}"


def start_stack(directory: Path, *, gateway: dict[str, Any] | None = None, **overrides: Any) -> Stack:
    """The stack in `directory`; `overrides` are settings of every process, `gateway` settings of the edge alone
    (its rate limits, say)."""
    import importlib

    apps: dict[str, ServiceApp] = {}
    ports: dict[str, int] = {}
    for name in SERVICES:
        module = importlib.import_module(f"{name}.main")
        settings = service_settings(module.Settings, name, f"sqlite:///{directory}/{name}.db", **overrides)
        apps[name] = module.create_app(settings)
        ports[name] = apps[name].start()
    from gateway import main as gateway_main

    addresses = {f"{name}_addr": f"127.0.0.1:{ports[name]}" for name in SERVICES}
    settings = service_settings(gateway_main.Settings, "gateway", "", **addresses, **overrides, **(gateway or {}))
    apps["gateway"] = gateway_main.create_app(settings)
    ports["gateway"] = apps["gateway"].start()
    return Stack(apps, ports)


def stop_stack(running: Stack) -> None:
    """Stops every process of `running` not stopped already (a test may have stopped a backend), edge first."""
    for name, app in reversed(list(running.apps.items())):
        if name not in running.stopped:
            app.stop(0)
            running.stopped.add(name)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = start_stack(tmp_path_factory.mktemp("stack"))
    yield running
    for app in reversed(list(running.apps.values())):
        app.stop(0)


@pytest.fixture(scope="session")
def authority() -> Any:
    return test_authority()
