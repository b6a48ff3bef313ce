"""A process built with the runtime's bootstrap whose one RPC takes as long as asked (for shutdown tests).

Run: python slow_service.py <port>; it prints "ready" once serving.
"""

from __future__ import annotations

import sys
import time

import grpc

from storeplane_runtime.server import ServiceHost, run_until_signal
from storeplane_runtime.settings import ServiceSettings

SERVICE = "test.v1.SlowService"


def sleep(request: bytes, context: grpc.ServicerContext) -> bytes:
    time.sleep(int(request.decode()) / 1000)
    return b"done"


def main() -> None:
    settings = ServiceSettings(
        service_name="slow", grpc_host="127.0.0.1", grpc_port=int(sys.argv[1]), shutdown_grace_seconds=10
    )
    handler = grpc.method_handlers_generic_handler(SERVICE, {"Sleep": grpc.unary_unary_rpc_method_handler(sleep)})
    # A bootstrap test of its own (not a pos service, no declared scopes): nothing to authorise.
    host = ServiceHost(settings, generic_handlers=[handler], extra_service_names=[SERVICE], authorise=False)
    host.start()
    print("ready", flush=True)
    run_until_signal([host])


if __name__ == "__main__":
    main()
