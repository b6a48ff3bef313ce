"""SIGTERM: health goes NOT_SERVING first, in-flight calls finish, new calls are refused."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from storeplane_runtime.testing import free_port_block

SCRIPT = Path(__file__).with_name("slow_service.py")


def test_sigterm_lets_in_flight_calls_finish_and_refuses_new_ones() -> None:
    port = free_port_block(1)  # outside the ephemeral range: nothing else takes it before the child binds
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(service="test.v1.SlowService"), timeout=2).status == (
            health_pb2.HealthCheckResponse.SERVING
        )
        # Watch health on its own connection so we see the NOT_SERVING transition as it happens.
        watch_channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        statuses: list[tuple[float, int]] = []
        watch = health_pb2_grpc.HealthStub(watch_channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)

        def follow() -> None:
            try:
                for reply in watch:
                    statuses.append((time.monotonic(), reply.status))
                    if reply.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                        watch.cancel()  # a long-lived stream would otherwise hold shutdown for the full grace
            except grpc.RpcError:
                pass

        watcher = threading.Thread(target=follow)
        watcher.start()

        sleep = channel.unary_unary("/test.v1.SlowService/Sleep")
        in_flight = [sleep.future(b"1500", timeout=10) for _ in range(4)]
        finished: list[float] = []
        for f in in_flight:
            f.add_done_callback(lambda _f: finished.append(time.monotonic()))
        time.sleep(0.3)  # the calls are running in the server now
        signalled_at = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)

        fresh = grpc.insecure_channel(f"127.0.0.1:{port}")
        try:
            fresh.unary_unary("/test.v1.SlowService/Sleep")(b"1", timeout=2)
            refused = None
        except grpc.RpcError as exc:
            refused = exc.code()
        assert refused == grpc.StatusCode.UNAVAILABLE

        assert [f.result() for f in in_flight] == [b"done"] * 4
        assert proc.wait(timeout=15) == 0
        watcher.join(timeout=5)
        not_serving = [t for t, s in statuses if s == health_pb2.HealthCheckResponse.NOT_SERVING]
        assert not_serving, f"health never reported NOT_SERVING: {statuses}"
        assert signalled_at <= not_serving[0] < min(finished)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
