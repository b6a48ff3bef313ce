"""Foundation scenarios: embedded cold start, the gateway's added latency, idle memory per process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.floor import ECHO, start_echo_process
from benchmarks.harness import Bench, Figure, scenario, summarise_latencies
from pos.common.v1 import common_pb2
from pos.stock.v1 import stock_pb2, stock_pb2_grpc
from storeplane_runtime.auth.client import with_bearer
from storeplane_runtime.auth.issuer import DevIssuer

PROCESSES = ("gateway", "checkout", "stock", "customer", "loyalty")
BASE_PORT = 57050
STOCK_SERVICE = "pos.stock.v1.StockService"


# Poll with short reconnect backoff: a channel that met a closed port otherwise waits 1 s, 1.6 s, 2.6 s…
# before trying again, and the measurement would be of gRPC's backoff, not of our start.
FAST_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 10),
    ("grpc.min_reconnect_backoff_ms", 10),
    ("grpc.max_reconnect_backoff_ms", 50),
]


def _all_serving(addresses: list[str], channels: dict[str, grpc.Channel]) -> bool:
    """Each `host:port` (or `host:port/service`: that service's status, e.g. the edge's for the one backend that a
    scenario runs, where the edge as a whole waits for all four) answers SERVING."""
    for target in addresses:
        address, _, service = target.partition("/")
        channel = channels.setdefault(address, grpc.insecure_channel(address, options=FAST_RECONNECT))
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=0.2, wait_for_ready=True
            )
        except grpc.RpcError:
            return False
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            return False
    return True


def _wait_serving(addresses: list[str], timeout: float = 60.0) -> float:
    channels: dict[str, grpc.Channel] = {}
    started = time.perf_counter()
    try:
        while time.perf_counter() - started < timeout:
            if _all_serving(addresses, channels):
                return time.perf_counter() - started
            time.sleep(0.005)
    finally:
        for channel in channels.values():
            channel.close()
    raise TimeoutError(f"not all SERVING after {timeout}s: {addresses}")


def _start_embedded(data_dir: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "storeplane_cli",
            "run",
            "--no-seed",
            "--data-dir",
            data_dir,
            "--base-port",
            str(BASE_PORT),
            "--metrics-port",
            "0",
        ],
        stdout=subprocess.DEVNULL,
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@scenario("embedded_cold_start", group="foundation")
def embedded_cold_start(bench: Bench) -> list[Figure]:
    addresses = [f"127.0.0.1:{BASE_PORT + i}" for i in range(len(PROCESSES))]
    runs = []
    for _ in range(1 if bench.quick else 3):
        with tempfile.TemporaryDirectory() as data_dir:  # fresh: migrations run too
            started = time.perf_counter()
            proc = _start_embedded(data_dir)
            try:
                _wait_serving(addresses)
                runs.append(time.perf_counter() - started)
            finally:
                _stop(proc)
    best, worst = min(runs), max(runs)
    return [
        Figure(
            "cold_start_to_all_serving_s",
            sorted(runs)[len(runs) // 2],
            "s",
            at_most=3.0,
            note=f"median of {len(runs)} fresh starts (min {best:.2f}, max {worst:.2f}), incl. interpreter start",
        ),
    ]


def bench_issuer(directory: str | Path) -> DevIssuer:
    """The development issuer of a scenario's processes (they read its JWKS) and of its clients' tokens."""
    return DevIssuer(Path(directory) / "auth").ensure()


def auth_environment(issuer: DevIssuer) -> dict[str, str]:
    """What a process started by a scenario needs to check the scenario's tokens."""
    return {"AUTH_JWKS_FILE": str(issuer.jwks_file)}


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying `token`: given per call, so no client interceptor adds to what is measured."""
    return (("authorization", f"Bearer {token}"),)


def _start_processes(names: tuple[str, ...], data_dir: str, port_base: int) -> dict[str, subprocess.Popen[bytes]]:
    """Each named process its own child (as in production), SQLite and the development keys under data_dir, ports
    from port_base."""
    env = {**os.environ, "DATA_DIR": data_dir, "METRICS_PORT": "0", "GRPC_HOST": "127.0.0.1", "LOG_LEVEL": "WARNING"}
    env.update(auth_environment(bench_issuer(data_dir)))
    # The limiter's work is part of the gateway's overhead; its limit must not turn calls away mid-measurement.
    env.update({"RATE_LIMIT_PER_SECOND": "1000000", "RATE_LIMIT_BURST": "1000000"})
    env.update({f"{n.upper()}_ADDR": f"127.0.0.1:{port_base + i}" for i, n in enumerate(PROCESSES) if n != "gateway"})
    procs = {}
    for name in names:
        port = port_base + PROCESSES.index(name)
        procs[name] = subprocess.Popen(
            [sys.executable, "-m", name], env={**env, "GRPC_PORT": str(port)}, stdout=subprocess.DEVNULL
        )
    return procs


@scenario("gateway_overhead", group="foundation")
def gateway_overhead(bench: Bench) -> list[Figure]:
    """The same stock call straight to the stock process and through the gateway process, and beside them the
    floor's echo to a process of its own, interleaved call by call: the three p50s are taken under the same
    conditions (a shared 2-core machine drifts by tens of percent between blocks of calls)."""
    port_base = BASE_PORT + 20
    count = 1500 if bench.quick else 6000
    direct_address = f"127.0.0.1:{port_base + PROCESSES.index('stock')}"
    gateway_address = f"127.0.0.1:{port_base}"
    with tempfile.TemporaryDirectory() as data_dir:
        procs = _start_processes(("stock", "gateway"), data_dir, port_base)
        echo, echo_port = start_echo_process()
        token = bench_issuer(data_dir).mint(subject="bench")
        try:
            _wait_serving([direct_address, f"{gateway_address}/{STOCK_SERVICE}"])
            _import_one_item(direct_address, "SHO-RUN-01-BLA-40", token)  # so the measured call is a successful one
            request = stock_pb2.GetItemRequest(sku="SHO-RUN-01-BLA-40", store_id="berlin-mitte").SerializeToString()
            # The stock calls carry a token (checked by the gateway, then by stock); the floor's echo stays bare.
            targets = {
                "direct": (direct_address, "/pos.stock.v1.StockService/GetItem", bearer(token)),
                "gateway": (gateway_address, "/pos.stock.v1.StockService/GetItem", bearer(token)),
                "echo": (f"127.0.0.1:{echo_port}", ECHO, ()),
            }
            channels = [grpc.insecure_channel(address) for address, _, _ in targets.values()]
            try:
                calls = {
                    label: _tolerant(
                        channel.unary_unary(path, request_serializer=None, response_deserializer=None), metadata
                    )
                    for (label, (_, path, metadata)), channel in zip(targets.items(), channels, strict=True)
                }
                samples = _interleaved(calls, request, count)
            finally:
                for channel in channels:
                    channel.close()
        finally:
            echo.terminate()
            echo.wait(10)
            for proc in procs.values():
                _stop(proc)
    lat = {label: summarise_latencies(values) for label, values in samples.items()}
    added = lat["gateway"]["p50_ms"] - lat["direct"]["p50_ms"]
    floor = lat["echo"]["p50_ms"]
    before = bench.ratio(added, "grpc_echo_p50_ms")
    return [
        Figure("stock_get_item_direct_p50_ms", lat["direct"]["p50_ms"], "ms"),
        Figure("stock_get_item_via_gateway_p50_ms", lat["gateway"]["p50_ms"], "ms"),
        Figure("grpc_echo_interleaved_p50_ms", floor, "ms", note="the floor's echo, interleaved with the calls"),
        Figure(
            "gateway_added_p50_ms",
            added,
            "ms",
            at_most=min(0.15, 1.5 * floor),
            floor="grpc_echo_interleaved_p50_ms",
            ratio=added / floor,
            note=f"the edge (Envoy) over a direct call; target: <= 0.15 ms and <= 1.5x the floor's p50 "
            f"({before or float('nan'):.2f}x the floor measured before)",
        ),
    ]


@scenario("edge_rest_get_item", group="foundation")
def edge_rest_get_item(bench: Bench) -> list[Figure]:
    """GetItem through the edge as REST/JSON and as native gRPC, by the same number of callers in turn: what the
    transcoding costs a partner's HTTP client against a till's gRPC one."""
    port_base = BASE_PORT + 30
    seconds = 2.0 if bench.quick else 6.0
    gateway_port = port_base
    with tempfile.TemporaryDirectory() as data_dir:
        procs = _start_processes(("stock", "gateway"), data_dir, port_base)
        token = bench_issuer(data_dir).mint(subject="bench")
        try:
            direct = f"127.0.0.1:{port_base + PROCESSES.index('stock')}"
            _wait_serving([direct, f"127.0.0.1:{gateway_port}/{STOCK_SERVICE}"])
            _import_one_item(direct, "SHO-RUN-01-BLA-40", token)
            rounds = {"grpc": [], "rest": []}  # type: dict[str, list[tuple[float, list[float]]]]
            for _ in range(2 if bench.quick else 3):  # in turn, so that drift hits both alike
                for kind in ("grpc", "rest"):
                    rounds[kind].append(_closed_loop(kind, gateway_port, token, seconds, callers=8))
        finally:
            for proc in procs.values():
                _stop(proc)
    rate = {kind: sum(r for r, _ in runs) / len(runs) for kind, runs in rounds.items()}
    p50 = {kind: summarise_latencies([x for _, xs in runs for x in xs])["p50_ms"] for kind, runs in rounds.items()}
    return [
        Figure("edge_grpc_get_item_calls_per_s_8", rate["grpc"], "calls/s", note="8 callers through the edge"),
        Figure(
            "edge_rest_get_item_calls_per_s_8", rate["rest"], "calls/s", note="GET /v1/stores/{store_id}/items/{sku}"
        ),
        Figure(
            "edge_rest_over_grpc_rate",
            rate["rest"] / rate["grpc"],
            "x",
            at_least=0.6,
            note="REST/JSON calls/s over native gRPC calls/s, same RPC, same edge, same callers",
        ),
        Figure("edge_grpc_get_item_p50_ms", p50["grpc"], "ms"),
        Figure("edge_rest_get_item_p50_ms", p50["rest"], "ms"),
        Figure("edge_rest_added_p50_ms", p50["rest"] - p50["grpc"], "ms", at_most=2.0, note="REST p50 - gRPC p50"),
    ]


def _closed_loop(kind: str, port: int, token: str, seconds: float, callers: int) -> tuple[float, list[float]]:
    """`callers` threads calling GetItem back to back for `seconds`: (calls/s, each call's latency)."""
    import http.client
    import json
    import threading

    path = "/v1/stores/berlin-mitte/items/SHO-RUN-01-BLA-40"
    request = stock_pb2.GetItemRequest(sku="SHO-RUN-01-BLA-40", store_id="berlin-mitte").SerializeToString()
    latencies: list[list[float]] = [[] for _ in range(callers)]
    stop_at = time.perf_counter() + seconds
    failures: list[str] = []

    def run(mine: list[float]) -> None:
        if kind == "grpc":
            channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=(("grpc.use_local_subchannel_pool", 1),))
            call = channel.unary_unary(
                "/pos.stock.v1.StockService/GetItem", request_serializer=None, response_deserializer=None
            )
            while (started := time.perf_counter()) < stop_at:
                stock_pb2.GetItemResponse.FromString(call(request, timeout=5, metadata=bearer(token)))
                mine.append(time.perf_counter() - started)
            channel.close()
            return
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        headers = {"authorization": f"Bearer {token}"}
        while (started := time.perf_counter()) < stop_at:
            connection.request("GET", path, headers=headers)
            answer = connection.getresponse()
            body = answer.read()
            if answer.status != 200:
                failures.append(f"{answer.status} {body[:200]!r}")
                return
            json.loads(body)
            mine.append(time.perf_counter() - started)
        connection.close()

    threads = [threading.Thread(target=run, args=(mine,)) for mine in latencies]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise RuntimeError(f"REST GetItem through the edge failed: {failures[0]}")
    every = [x for mine in latencies for x in mine]
    return len(every) / (time.perf_counter() - began), every


def _interleaved(calls: dict[str, Any], request: bytes, count: int) -> dict[str, list[float]]:
    """Round after round, one call to each target, each timed."""
    for call in calls.values():
        for _ in range(200):  # warm up connections and caches
            call(request, timeout=5)
    samples: dict[str, list[float]] = {label: [] for label in calls}
    for _ in range(count):
        for label, call in calls.items():
            started = time.perf_counter()
            call(request, timeout=5)
            samples[label].append(time.perf_counter() - started)
    return samples


def _import_one_item(address: str, sku: str, token: str) -> None:
    with with_bearer(grpc.insecure_channel(address), token) as channel:
        item = stock_pb2.Item(
            sku=sku,
            name="Bench shoe",
            tax_class="standard",
            prices=[common_pb2.Money(amount_minor=8999, currency_code="EUR")],
        )
        stock_pb2_grpc.StockServiceStub(channel).ImportItems(
            iter([stock_pb2.ImportItemsRequest(request_id="bench-item", item=item)]), timeout=30
        )


def _tolerant(
    call: grpc.UnaryUnaryMultiCallable, metadata: tuple[tuple[str, str], ...] = ()
) -> grpc.UnaryUnaryMultiCallable:
    """A call with `metadata` whose NOT_FOUND / UNIMPLEMENTED answers count (they made the full round trip); a refused
    token or a rate limit would measure a shortcut, so those fail the scenario."""

    def invoke(payload: bytes, timeout: float) -> None:
        try:
            call(payload, timeout=timeout, metadata=metadata)
        except grpc.RpcError as exc:
            if exc.code() in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.StatusCode.UNAUTHENTICATED,
                grpc.StatusCode.PERMISSION_DENIED,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
            ):
                raise

    return invoke  # type: ignore[return-value]


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.extend(int(x) for x in text)
    return found


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@scenario("idle_memory", group="foundation")
def idle_memory(bench: Bench) -> list[Figure]:
    port_base = BASE_PORT + 10
    figures = []
    with tempfile.TemporaryDirectory() as data_dir:
        procs = _start_processes(PROCESSES, data_dir, port_base)
        try:
            _wait_serving([f"127.0.0.1:{port_base + i}" for i in range(len(PROCESSES))])
            time.sleep(1.0)
            for name, proc in procs.items():
                figures.append(Figure(f"idle_rss_{name}_mb", _rss_mb(proc.pid), "MB", at_most=120.0))
            for child in _children(procs["gateway"].pid):  # the edge's Envoy, a child of the gateway process
                figures.append(
                    Figure("idle_rss_envoy_mb", _rss_mb(child), "MB", at_most=120.0, note="Envoy of the edge")
                )
        finally:
            for proc in procs.values():
                _stop(proc)
    return figures
