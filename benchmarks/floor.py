"""The floor: a bare grpcio unary echo on this machine (no interceptors, no protobuf decoding).

The echo server runs in a process of its own, as every measured service does: the floor is one round trip between
two processes with nothing in between. The same echo with client and server in one process (sharing one GIL) is
printed beside it for reference. `python -m benchmarks.floor` serves the echo and prints its port.
"""

from __future__ import annotations

import subprocess
import sys
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


def start_echo_process() -> tuple[subprocess.Popen[str], int]:
    """The echo server in a child process; returns it and its port."""
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.floor"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.strip().isdigit():
        proc.kill()
        raise RuntimeError(f"echo server did not start: {line!r}")
    return proc, int(line)


def _measure(address: str, quick: bool) -> tuple[dict[str, float], float]:
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(ECHO, request_serializer=None, response_deserializer=None)
        payload = b"x" * 64
        lat = summarise_latencies(sequential_latencies(call, payload, 500 if quick else 3000))
        rate = throughput(call, payload, 16, 1.0 if quick else 3.0)
    return lat, rate


@scenario("floor_grpc_echo", group="floor")
def floor_grpc_echo(bench: Bench) -> list[Figure]:
    proc, port = start_echo_process()
    try:
        lat, rate = _measure(f"127.0.0.1:{port}", bench.quick)
    finally:
        proc.terminate()
        proc.wait(10)
    server, port = start_echo_server()
    try:
        same_process, _ = _measure(f"127.0.0.1:{port}", quick=True)
    finally:
        server.stop(0)
    return [
        Figure("grpc_echo_p50_ms", lat["p50_ms"], "ms", note="client and echo server in two processes"),
        Figure("grpc_echo_p99_ms", lat["p99_ms"], "ms"),
        Figure("grpc_echo_calls_per_s_16", rate, "calls/s", note="16 caller threads in one process"),
        Figure("grpc_echo_same_process_p50_ms", same_process["p50_ms"], "ms", note="reference: one process, one GIL"),
    ]


if __name__ == "__main__":
    echo, bound = start_echo_server()
    print(bound, flush=True)
    echo.wait_for_termination()
