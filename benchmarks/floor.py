"""The floor: a bare grpcio unary echo on this machine (no interceptors, no protobuf decoding)."""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc

from benchmarks.harness import Bench, Figure, scenario, summarise_latencies

ECHO = "/bench.Echo/Echo"


def start_echo_server() -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(lambda request, context: request)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def sequential_latencies(call: grpc.UnaryUnaryMultiCallable, payload: bytes, count: int) -> list[float]:
    for _ in range(min(200, count)):
        call(payload, timeout=5)
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        call(payload, timeout=5)
        samples.append(time.perf_counter() - started)
    return samples


def throughput(call: grpc.UnaryUnaryMultiCallable, payload: bytes, callers: int, seconds: float) -> float:
    done = [0] * callers
    stop = time.perf_counter() + seconds

    def worker(i: int) -> None:
        while time.perf_counter() < stop:
            call(payload, timeout=5)
            done[i] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / seconds


@scenario("floor_grpc_echo", group="floor")
def floor_grpc_echo(bench: Bench) -> list[Figure]:
    server, port = start_echo_server()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary(ECHO)
            payload = b"x" * 64
            lat = summarise_latencies(sequential_latencies(call, payload, 500 if bench.quick else 3000))
            rate = throughput(call, payload, 16, 1.0 if bench.quick else 3.0)
    finally:
        server.stop(0)
    return [
        Figure("grpc_echo_p50_ms", lat["p50_ms"], "ms"),
        Figure("grpc_echo_p99_ms", lat["p99_ms"], "ms"),
        Figure("grpc_echo_calls_per_s_16", rate, "calls/s"),
    ]
