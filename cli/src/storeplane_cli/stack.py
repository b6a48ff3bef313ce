"""The five processes, started together: in one process (embedded) or each in its own (distributed)."""

from __future__ import annotations

import importlib
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from storeplane_cli.tokens import auth_dir, dev_issuer
from storeplane_runtime.app import ServiceApp
from storeplane_runtime.auth.issuer import JWKS_FILE
from storeplane_runtime.settings import DEFAULT_PORTS, load_settings

log = logging.getLogger(__name__)

SERVICES = ("checkout", "stock", "customer", "loyalty")
PROCESSES = ("gateway", *SERVICES)


@dataclass(frozen=True)
class Layout:
    """Where each process listens: gateway on `base_port`, the services on the next four ports."""

    host: str = "127.0.0.1"
    base_port: int = DEFAULT_PORTS["gateway"]

    def port(self, name: str) -> int:
        return self.base_port + PROCESSES.index(name)

    def address(self, name: str) -> str:
        return f"{self.host}:{self.port(name)}"

    def peer_overrides(self) -> dict[str, str]:
        return {f"{name}_addr": self.address(name) for name in SERVICES}


def create_app(name: str, **overrides: Any) -> ServiceApp:
    module = importlib.import_module(f"{name}.main")
    settings = load_settings(module.Settings, name, **overrides)
    app: ServiceApp = module.create_app(settings)
    return app


class EmbeddedStack:
    """All five processes' apps in this process, each service with its own SQLite file under `data_dir`, all
    trusting the development issuer's keys there (made on the first start)."""

    def __init__(self, layout: Layout, data_dir: Path, *, metrics_port: int = 0) -> None:
        self.layout = layout
        self.data_dir = data_dir
        self.issuer = dev_issuer(data_dir)
        self.apps: list[ServiceApp] = []
        for name in PROCESSES:
            self.apps.append(
                create_app(
                    name,
                    grpc_host=layout.host,
                    grpc_port=layout.port(name),
                    data_dir=data_dir,
                    database_url="",
                    amqp_url="",
                    auto_migrate=True,
                    metrics_port=metrics_port if name == "gateway" else 0,
                    auth_jwks_file=str(self.issuer.jwks_file),
                    auth_jwks_url="",
                    reflection="open",
                    **layout.peer_overrides(),
                )
            )

    def start(self) -> None:
        # Services first (their schemas migrate in parallel), the gateway last.
        services, gateway = self.apps[1:], self.apps[0]
        errors: list[BaseException] = []

        def start_one(app: ServiceApp) -> None:
            try:
                app.start()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=start_one, args=(app,)) for app in services]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            self.stop(0)
            raise errors[0]
        gateway.start()

    def stop(self, grace: float | None = None) -> None:
        threads = [threading.Thread(target=app.stop, args=(grace,)) for app in self.apps]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def distributed_environment(name: str, layout: Layout, base_env: Mapping[str, str]) -> dict[str, str]:
    """Environment of one process in `up` mode: its port, peers, its own database and broker URLs, and the
    development issuer's keys under DATA_DIR/auth (a process that calls peers finds the signing key beside them)."""
    env = dict(base_env)
    env.update({f"{n.upper()}_ADDR": layout.address(n) for n in SERVICES})
    env["GRPC_HOST"] = layout.host
    env["GRPC_PORT"] = str(layout.port(name))
    data_dir = Path(base_env.get("DATA_DIR") or "var").absolute()
    env["DATA_DIR"] = str(data_dir)
    env["AUTH_JWKS_FILE"] = str(auth_dir(data_dir) / JWKS_FILE)
    env.pop("AUTH_JWKS_URL", None)
    env["REFLECTION"] = "open"
    env.setdefault("METRICS_PORT", "0")
    if name != "gateway":
        env["METRICS_PORT"] = base_env.get(f"METRICS_PORT_{name.upper()}", "0")
        env["DATABASE_URL"] = database_url_for(name, base_env)
        env["AMQP_URL"] = base_env.get(f"AMQP_URL_{name.upper()}", base_env.get("AMQP_URL", ""))
    return env


def database_url_for(name: str, env: Mapping[str, str]) -> str:
    """DATABASE_URL_<SVC>, else POSTGRES_URL with the service's own database, else SQLite under DATA_DIR."""
    if env.get(f"DATABASE_URL_{name.upper()}"):
        return env[f"DATABASE_URL_{name.upper()}"]
    if env.get("POSTGRES_URL"):
        return make_url(env["POSTGRES_URL"]).set(database=f"storeplane_{name}").render_as_string(False)
    return f"sqlite:///{Path(env.get('DATA_DIR', 'var')) / (name + '.db')}"


def ensure_postgres_database(url: str) -> None:
    """Create the service's database on its server if it is missing (dev convenience for `up`)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql" or not parsed.database:
        return
    admin = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            exists = conn.execute(text("select 1 from pg_database where datname = :n"), {"n": parsed.database}).first()
            if not exists:
                conn.execute(text(f'CREATE DATABASE "{parsed.database}"'))
    finally:
        admin.dispose()


class ProcessStack:
    """Each process its own child `python -m <name>`; stops them all when one dies or on a signal."""

    def __init__(self, layout: Layout, env: Mapping[str, str], names: Sequence[str] = PROCESSES) -> None:
        self.layout = layout
        self.env = env
        self.names = list(names)
        self.children: dict[str, subprocess.Popen[bytes]] = {}

    def start(self) -> None:
        dev_issuer(Path(self.env.get("DATA_DIR") or "var"), self.env)  # the keys every child reads, made once
        for name in [n for n in self.names if n != "gateway"] + [n for n in self.names if n == "gateway"]:
            env = distributed_environment(name, self.layout, self.env)
            if name != "gateway":
                ensure_postgres_database(env["DATABASE_URL"])
            self.children[name] = subprocess.Popen([sys.executable, "-m", name], env=env)

    def stop(self, grace: float = 15.0) -> None:
        for child in self.children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in self.children.values():
            try:
                child.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()

    def wait(self) -> int:
        """Block until a signal or a child exits; returns the first non-zero exit code seen (or 0)."""
        stop = threading.Event()
        previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            while not stop.wait(0.5):
                for name, child in self.children.items():
                    if child.poll() is not None:
                        log.error("process exited", extra={"process": name, "code": child.returncode})
                        stop.set()
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
            self.stop()
        codes = [c.returncode for c in self.children.values() if c.returncode not in (0, -signal.SIGTERM, None)]
        return codes[0] if codes else 0
