"""The edge's Envoy configuration, generated from the contracts' descriptors and the gateway's settings: one route
per RPC to its service's cluster (deadline, retries only where a retry is harmless, no timeout on streams), bearer
tokens checked by jwt_authn, REST/JSON by the transcoder from the `google.api.http` bindings, gRPC-Web, CORS, one
rate budget per token subject and one per client address for calls without a token, JSON access logs, Prometheus
stats and, when OTEL_EXPORTER_OTLP_ENDPOINT is set, a span per call. Never edited by hand: `python -m gateway
render DIR` writes what a process would run. The filters are in envoy_filters.py, Envoy's own answers and the access
line in envoy_replies.py, the plan it is all made from in envoy_plan.py."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from gateway.envoy_filters import (
    HEALTH_PREFIX,
    JWKS_CLUSTER,
    OPENAPI_PATH,
    REFLECTION_PREFIXES,
    SUBJECT_HEADER,
    anonymous_limit_filter,
    cors_policy,
    jwt_filter,
    rest_requests_filter,
    subject_limit_filter,
    transcoder_filter,
)
from gateway.envoy_plan import EdgePlan, duration, typed
from gateway.envoy_replies import JWT_REFUSALS, access_log_config, local_reply_config

__all__ = [
    "COMPANION_CLUSTER",
    "JWT_REFUSALS",
    "SUBJECT_HEADER",
    "EdgePlan",
    "envoy_config",
    "method_routes",
    "safe_to_retry",
    "tls_secrets",
]


COMPANION_CLUSTER = "edge_companion"


PREFLIGHT_CLUSTER = "preflight"


def safe_to_retry(method: MethodDescriptor) -> bool:
    """A unary call whose repetition changes nothing: a read (no request_id), or a write under its idempotency key."""
    return not (method.client_streaming or method.server_streaming)


def method_routes(services: Sequence[ServiceDescriptor], plan: EdgePlan) -> list[dict[str, Any]]:
    """One route per RPC (gRPC and gRPC-Web use its path; the transcoder rewrites REST calls to it first)."""
    routes: list[dict[str, Any]] = []
    for service in services:
        cluster = _cluster_name(service.full_name)
        for method in service.methods:
            streaming = method.client_streaming or method.server_streaming
            action: dict[str, Any] = {
                "cluster": cluster,
                # The caller's grpc-timeout wins (it travels on to the service); without one, the default deadline.
                "timeout": "0s",
                "max_stream_duration": {"grpc_timeout_header_max": "0s"},
            }
            if not streaming:
                action["max_stream_duration"]["max_stream_duration"] = duration(plan.default_deadline_seconds)
                action["retry_policy"] = _retry_policy(plan, safe_to_retry(method))
            else:
                action["idle_timeout"] = "0s"  # a quiet WatchStock is not idle: the stream stays open
            route: dict[str, Any] = {
                "name": f"{service.full_name}/{method.name}",
                "match": {"path": f"/{service.full_name}/{method.name}"},
                "route": action,
                # The span's name: the RPC, as gRPC's own spans name it.
                "decorator": {"operation": f"/{service.full_name}/{method.name}"},
            }
            routes.append(route)
    return routes


def _retry_policy(plan: EdgePlan, safe: bool) -> dict[str, Any]:
    # A call that never reached the service (refused connection or stream) is retried whatever it is; one the
    # service answered UNAVAILABLE only when repeating it is harmless.
    on = "connect-failure,refused-stream,reset" + (",unavailable" if safe else "")
    return {
        "retry_on": on,
        "num_retries": plan.retry_attempts,
        "retry_back_off": {"base_interval": "0.025s", "max_interval": "0.25s"},
    }


def _cluster_name(service: str) -> str:
    return service.replace(".", "_")


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _address(address: str) -> dict[str, Any]:
    host, port = _host_port(address)
    return {"socket_address": {"address": host, "port_value": port}}


def _h2_options(plan: EdgePlan) -> dict[str, Any]:
    return {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": typed("extensions.upstreams.http.v3.HttpProtocolOptions"),
            "explicit_http_config": {
                "http2_protocol_options": {
                    "max_concurrent_streams": 1000,
                    "initial_stream_window_size": 1048576,
                    "initial_connection_window_size": 4194304,
                }
            },
        }
    }


def _backend_cluster(name: str, address: str, plan: EdgePlan) -> dict[str, Any]:
    host, _ = _host_port(address)
    return {
        "name": _cluster_name(name),
        "type": "STATIC" if host.replace(".", "").isdigit() else "STRICT_DNS",
        "connect_timeout": "1s",
        "dns_lookup_family": "V4_PREFERRED",
        "typed_extension_protocol_options": _h2_options(plan),
        "load_assignment": {
            "cluster_name": _cluster_name(name),
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _address(address)}}]}],
        },
        "health_checks": [
            {
                "timeout": "1s",
                "interval": "2s",
                "unhealthy_threshold": 2,
                "healthy_threshold": 1,
                "no_traffic_interval": "5s",
                "grpc_health_check": {"service_name": ""},
            }
        ],
        # Envoy's default panic threshold: with the only host failing its checks (or not checked yet, at start),
        # calls still go to it, and fail UNAVAILABLE by themselves if it is really down.
        "outlier_detection": {
            "consecutive_5xx": 0,
            "enforcing_consecutive_5xx": 0,
            "consecutive_gateway_failure": 5,
            "enforcing_consecutive_gateway_failure": 100,
            "interval": "5s",
            "base_ejection_time": "5s",
            "max_ejection_percent": 100,
        },
        "circuit_breakers": {
            "thresholds": [{"max_connections": 10000, "max_pending_requests": 10000, "max_requests": 10000}]
        },
    }


def _companion_cluster(plan: EdgePlan) -> dict[str, Any]:
    cluster = _backend_cluster(COMPANION_CLUSTER, plan.companion, plan)
    cluster["name"] = COMPANION_CLUSTER
    cluster["load_assignment"]["cluster_name"] = COMPANION_CLUSTER
    del cluster["health_checks"], cluster["outlier_detection"]
    return cluster


def _jwks_cluster(url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname or "localhost"
    cluster: dict[str, Any] = {
        "name": JWKS_CLUSTER,
        "type": "STATIC" if host.replace(".", "").isdigit() else "STRICT_DNS",
        "connect_timeout": "2s",
        "dns_lookup_family": "V4_PREFERRED",
        "load_assignment": {
            "cluster_name": JWKS_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _address(f"{host}:{port}")}}]}],
        },
    }
    if parts.scheme == "https":
        cluster["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": typed("extensions.transport_sockets.tls.v3.UpstreamTlsContext"),
                "sni": host,
                "common_tls_context": {
                    "validation_context": {"trusted_ca": {"filename": "/etc/ssl/certs/ca-certificates.crt"}}
                },
            },
        }
    return cluster


def _tracing(plan: EdgePlan) -> dict[str, Any]:
    config: dict[str, Any] = {"@type": typed("config.trace.v3.OpenTelemetryConfig"), "service_name": plan.service_name}
    if plan.otlp_grpc:
        config["grpc_service"] = {"envoy_grpc": {"cluster_name": "otlp"}, "timeout": "2s"}
    else:
        uri = plan.otlp_endpoint.rstrip("/") + "/v1/traces"
        config["http_service"] = {"http_uri": {"uri": uri, "cluster": "otlp", "timeout": "2s"}}
    return {
        "provider": {"name": "envoy.tracers.opentelemetry", "typed_config": config},
        # A CLIENT span for the hop to the service under each call's SERVER span, as a gRPC client makes.
        "spawn_upstream_span": True,
    }


def _otlp_cluster(plan: EdgePlan) -> dict[str, Any]:
    cluster = _jwks_cluster(plan.otlp_endpoint)
    cluster["name"] = "otlp"
    cluster["load_assignment"]["cluster_name"] = "otlp"
    if plan.otlp_grpc:
        cluster["typed_extension_protocol_options"] = _h2_options(plan)
    return cluster


def _listener(services: Sequence[ServiceDescriptor], plan: EdgePlan) -> dict[str, Any]:
    routes: list[dict[str, Any]] = [
        {"match": {"prefix": HEALTH_PREFIX}, "route": {"cluster": COMPANION_CLUSTER, "timeout": "0s"}},
    ]
    if plan.openapi_file is not None:
        routes.append(
            {
                "match": {"path": OPENAPI_PATH, "headers": [{"name": ":method", "string_match": {"exact": "GET"}}]},
                "direct_response": {"status": 200, "body": {"filename": str(plan.openapi_file)}},
                "response_headers_to_add": [{"header": {"key": "content-type", "value": "application/json"}}],
                # The document is no RPC: the transcoder, which refuses paths no binding has, leaves it alone.
                "typed_per_filter_config": {
                    "envoy.filters.http.grpc_json_transcoder": {
                        "@type": typed("config.route.v3.FilterConfig"),
                        "disabled": True,
                    }
                },
            }
        )
    if plan.reflection != "off":
        routes += [
            {"match": {"prefix": p}, "route": {"cluster": COMPANION_CLUSTER, "timeout": "0s", "idle_timeout": "0s"}}
            for p in REFLECTION_PREFIXES
        ]
    routes += method_routes(services, plan)
    # Everything else: a REST path before the transcoder turns it into its RPC's (it then routes again), a browser's
    # preflight of one (the CORS filter answers it on a route), or no API at all: 404 (gRPC: UNIMPLEMENTED).
    # A gRPC or gRPC-Web call of no RPC: 404, which gRPC reads as UNIMPLEMENTED.
    routes.append(
        {
            "name": "no_such_rpc",
            "match": {
                "prefix": "/",
                "headers": [{"name": "content-type", "string_match": {"prefix": "application/grpc"}}],
            },
            "direct_response": {"status": 404, "body": {"inline_string": "no such RPC"}},
        }
    )
    # Any other path is a REST one before the transcoder turns it into its RPC's (the route is then chosen again; a
    # path no binding has, the transcoder refuses with 404). It must match a forwarding route, because the CORS filter
    # acts only on one (never on a direct response): this one answers a browser's preflight and decorates the answer.
    routes.append({"name": "rest", "match": {"prefix": "/"}, "route": {"cluster": PREFLIGHT_CLUSTER, "timeout": "1s"}})
    virtual_host: dict[str, Any] = {"name": "storeplane", "domains": ["*"], "routes": routes}
    if plan.cors_origins:
        virtual_host["typed_per_filter_config"] = {"envoy.filters.http.cors": cors_policy(plan)}
    http_filters: list[dict[str, Any]] = [
        {
            "name": "envoy.filters.http.cors",
            "typed_config": {"@type": typed("extensions.filters.http.cors.v3.Cors")},
        },
        {
            "name": "envoy.filters.http.grpc_web",
            "typed_config": {"@type": typed("extensions.filters.http.grpc_web.v3.GrpcWeb")},
        },
    ]
    http_filters.append(rest_requests_filter(services))
    if plan.anonymous_rate_per_second:
        http_filters.append(anonymous_limit_filter(plan))
    http_filters += [jwt_filter(plan), transcoder_filter(services, plan)]
    if plan.rate_per_second:
        http_filters.append(subject_limit_filter(plan))
    http_filters.append(
        {
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": typed("extensions.filters.http.router.v3.Router")},
        }
    )
    manager: dict[str, Any] = {
        "@type": typed("extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"),
        "stat_prefix": "edge",
        "codec_type": "AUTO",
        "use_remote_address": True,
        "normalize_path": True,
        "merge_slashes": True,
        "path_with_escaped_slashes_action": "REJECT_REQUEST",
        "generate_request_id": True,
        "stream_idle_timeout": "300s",
        "request_headers_timeout": "10s",
        "common_http_protocol_options": {"idle_timeout": "3600s", "headers_with_underscores_action": "REJECT_REQUEST"},
        "http2_protocol_options": {
            "max_concurrent_streams": 1000,
            "initial_stream_window_size": 1048576,
            "initial_connection_window_size": 4194304,
        },
        "route_config": {
            "name": "storeplane",
            "virtual_hosts": [virtual_host],
            "max_direct_response_body_size_bytes": 8 * 1024 * 1024,
        },
        "http_filters": http_filters,
        "access_log": access_log_config() if plan.access_log else [],
        "local_reply_config": local_reply_config(),
    }
    if plan.otlp_endpoint:
        manager["tracing"] = _tracing(plan)
    chain: dict[str, Any] = {
        "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}]
    }
    if plan.tls_secret_file is not None:
        sds: dict[str, Any] = {"path_config_source": {"path": str(plan.tls_secret_file)}}
        if plan.tls_watch_dir is not None:
            sds["path_config_source"]["watched_directory"] = {"path": str(plan.tls_watch_dir)}
        common: dict[str, Any] = {
            "tls_certificate_sds_secret_configs": [{"name": "edge_certificate", "sds_config": sds}],
            "alpn_protocols": ["h2", "http/1.1"],
        }
        if plan.client_certificates:
            ca_sds = json.loads(json.dumps(sds))
            ca_sds["path_config_source"]["path"] = str(plan.tls_client_ca_secret_file or plan.tls_secret_file)
            common["validation_context_sds_secret_config"] = {"name": "edge_client_ca", "sds_config": ca_sds}
        chain["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": typed("extensions.transport_sockets.tls.v3.DownstreamTlsContext"),
                "common_tls_context": common,
                "require_client_certificate": plan.client_certificates,
            },
        }
    return {
        "name": "edge",
        "address": {"socket_address": {"address": plan.listen_host, "port_value": plan.listen_port}},
        # What one request may hold in Envoy's buffers (a newline-delimited upload is read whole): a message's size.
        "per_connection_buffer_limit_bytes": plan.max_message_bytes,
        "filter_chains": [chain],
    }


def _metrics_listener(plan: EdgePlan) -> dict[str, Any]:
    """Prometheus scrapes /metrics here: the admin's /stats/prometheus, and nothing else of the admin."""
    manager = {
        "@type": typed("extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"),
        "stat_prefix": "metrics",
        "codec_type": "AUTO",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "metrics",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"path": "/metrics"},
                            "route": {"cluster": "admin", "prefix_rewrite": "/stats/prometheus"},
                        }
                    ],
                }
            ]
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": typed("extensions.filters.http.router.v3.Router")},
            }
        ],
    }
    return {
        "name": "metrics",
        "address": {"socket_address": {"address": plan.listen_host, "port_value": plan.metrics_port}},
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}]}
        ],
    }


def envoy_config(services: Sequence[ServiceDescriptor], plan: EdgePlan) -> dict[str, Any]:
    """The whole bootstrap for `plan`: what `envoy -c` runs."""
    clusters = [_backend_cluster(s.full_name, plan.backends[s.full_name], plan) for s in services]
    clusters += [_companion_cluster(plan), _jwks_cluster(plan.jwks_url)]
    clusters.append(
        {
            "name": PREFLIGHT_CLUSTER,
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {"cluster_name": PREFLIGHT_CLUSTER, "endpoints": []},
        }
    )
    if plan.otlp_endpoint:
        clusters.append(_otlp_cluster(plan))
    listeners = [_listener(services, plan)]
    if plan.metrics_port:
        listeners.append(_metrics_listener(plan))
        clusters.append(
            {
                "name": "admin",
                "type": "STATIC",
                "connect_timeout": "1s",
                "load_assignment": {
                    "cluster_name": "admin",
                    "endpoints": [
                        {"lb_endpoints": [{"endpoint": {"address": _address(f"127.0.0.1:{plan.admin_port}")}}]}
                    ],
                },
            }
        )
    return {
        "node": {"id": plan.service_name, "cluster": "storeplane-edge"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": plan.admin_port}}},
        "static_resources": {"listeners": listeners, "clusters": clusters},
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": typed(
                            "extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig"
                        ),
                        "max_active_downstream_connections": 50000,
                    },
                }
            ]
        },
        "layered_runtime": {"layers": [{"name": "static", "static_layer": _runtime(plan)}]},
    }


def _runtime(plan: EdgePlan) -> dict[str, Any]:
    layer: dict[str, Any] = {}
    if plan.otlp_endpoint:
        # Spans leave in batches, as often as the services' own (OTEL_BSP_SCHEDULE_DELAY, default 5 s).
        layer["tracing.opentelemetry.flush_interval_ms"] = plan.span_flush_ms
        layer["tracing.opentelemetry.min_flush_spans"] = 64
    return layer


def tls_secrets(cert_file: str, key_file: str, client_ca_file: str) -> dict[str, Any]:
    """The SDS file of the edge's certificate (and client CA): Envoy watches it and the files it names."""
    resources: list[dict[str, Any]] = [
        {
            "@type": typed("extensions.transport_sockets.tls.v3.Secret"),
            "name": "edge_certificate",
            "tls_certificate": {"certificate_chain": {"filename": cert_file}, "private_key": {"filename": key_file}},
        }
    ]
    if client_ca_file:
        resources.append(
            {
                "@type": typed("extensions.transport_sockets.tls.v3.Secret"),
                "name": "edge_client_ca",
                "validation_context": {"trusted_ca": {"filename": client_ca_file}},
            }
        )
    return {"resources": resources}


def load_descriptor_set(path: Path) -> descriptor_pb2.FileDescriptorSet:
    files = descriptor_pb2.FileDescriptorSet()
    files.ParseFromString(path.read_bytes())
    return files
