"""The edge's Envoy configuration, generated from the contracts' descriptors and the gateway's settings: one route
per RPC to its service's cluster (deadline, retries only where a retry is harmless, no timeout on streams), bearer
tokens checked by jwt_authn, REST/JSON by the transcoder from the `google.api.http` bindings, gRPC-Web, CORS, one
rate budget per token subject and one per client address for calls without a token, JSON access logs, Prometheus
stats and, when OTEL_EXPORTER_OTLP_ENDPOINT is set, a span per call. Never edited by hand: `python -m gateway.edge
config` prints what a process would run."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from google.protobuf import any_pb2, descriptor_pb2, duration_pb2
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.rpc import code_pb2, error_details_pb2, status_pb2

__all__ = [
    "COMPANION_CLUSTER",
    "JWT_REFUSALS",
    "SUBJECT_HEADER",
    "EdgePlan",
    "envoy_config",
    "method_routes",
    "safe_to_retry",
]

COMPANION_CLUSTER = "edge_companion"
JWKS_CLUSTER = "jwks"
PREFLIGHT_CLUSTER = "preflight"
PROVIDER = "storeplane"
# The verified subject, set by jwt_authn from the token (a client-sent copy is removed first): whose budget a call
# spends, and who the access log names.
SUBJECT_HEADER = "x-storeplane-subject"
HEALTH_PREFIX = "/grpc.health.v1.Health/"
REFLECTION_PREFIXES = ("/grpc.reflection.v1alpha.ServerReflection/", "/grpc.reflection.v1.ServerReflection/")
OPENAPI_PATH = "/openapi.json"
JWT_FILTER = "envoy.filters.http.jwt_authn"
JWT_FAILURE_KEY = "jwt_failure"
DOMAIN = "gateway.storeplane"

# jwt_authn's own refusal messages (what it writes as the failure's message) and the reason the kit's services give
# for the same refusal, so a caller reads one reason whether Envoy or a service said no.
JWT_REFUSALS: Mapping[str, tuple[str, str]] = {
    "Jwt is missing": ("TOKEN_MISSING", "a bearer token is required (authorization: Bearer <jwt>)"),
    "Jwt is expired": ("TOKEN_EXPIRED", "the token has expired"),
    "Jwt not yet valid": ("TOKEN_NOT_YET_VALID", "the token is not valid yet"),
    "Jwks doesn't have key to match kid or alg from Jwt": ("UNKNOWN_KEY", "no signing key of the token is known"),
    "Jwt verification fails": ("TOKEN_INVALID", "the token's signature does not verify"),
    "Jwt issuer is not configured": ("TOKEN_INVALID", "the token is from another issuer"),
    "Audiences in Jwt are not allowed": ("TOKEN_INVALID", "the token is for another audience"),
}
TOKEN_INVALID = ("TOKEN_INVALID", "the token is not valid")
CORS_HEADERS = "authorization,content-type,idempotency-key,x-grpc-web,x-user-agent,grpc-timeout,traceparent,tracestate"
CORS_EXPOSED = "grpc-status,grpc-message,grpc-status-details-bin,retry-after,x-ratelimit-limit,x-ratelimit-remaining"


@dataclass(frozen=True)
class EdgePlan:
    """Everything the configuration depends on besides the contracts: addresses, keys, limits, files."""

    listen_host: str
    listen_port: int
    backends: Mapping[str, str]  # full service name -> host:port
    companion: str  # host:port of the edge companion (health of the whole, reflection, the JWKS file over HTTP)
    descriptor_set: Path
    openapi_file: Path | None
    issuer: str
    audience: str
    jwks_url: str  # where Envoy fetches the keys (the companion's /jwks.json serves AUTH_JWKS_FILE)
    jwks_refresh_seconds: float
    leeway_seconds: float
    default_deadline_seconds: float
    max_message_bytes: int
    rate_per_second: int  # per token subject; 0: no limit
    rate_burst: int
    anonymous_rate_per_second: int  # per client address, calls without a token; 0: no limit
    anonymous_burst: int
    rate_limit_subjects: int  # token buckets kept (LRU); more active subjects than this start full again
    reflection: str  # open, token, off
    cors_origins: Sequence[str] = ()
    tls_secret_file: Path | None = None  # SDS file naming the certificate and key (watched)
    tls_client_ca_secret_file: Path | None = None  # SDS file naming the client CA (Envoy takes one secret a file)
    tls_watch_dir: Path | None = None
    client_certificates: bool = False
    metrics_port: int = 0
    admin_port: int = 0
    otlp_endpoint: str = ""
    service_name: str = "gateway"
    retry_attempts: int = 2
    span_flush_ms: int = 5000
    access_log: bool = True  # a JSON line per call (LOG_LEVEL INFO or DEBUG, as the services' RPC lines)
    otlp_grpc: bool = False  # OTLP over gRPC (OTEL_EXPORTER_OTLP_PROTOCOL=grpc) instead of OTLP/HTTP protobuf
    extra: Mapping[str, Any] = field(default_factory=dict)


def _typed(name: str) -> str:
    """The type URL of Envoy's config message `envoy.<name>`."""
    return f"type.googleapis.com/envoy.{name}"


def safe_to_retry(method: MethodDescriptor) -> bool:
    """A unary call whose repetition changes nothing: a read (no request_id), or a write under its idempotency key."""
    return not (method.client_streaming or method.server_streaming)


def _seconds(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".") + "s"


def _status_header(code: int, reason: str, message: str, *, retry_seconds: int = 0) -> str:
    """grpc-status-details-bin of a refusal Envoy makes itself: a google.rpc.Status with ErrorInfo (and RetryInfo)."""
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN))
    details = [info]
    if retry_seconds:
        retry = any_pb2.Any()
        retry.Pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=retry_seconds)))
        details.append(retry)
    status = status_pb2.Status(code=code, message=message, details=details)
    return base64.b64encode(status.SerializeToString()).decode().rstrip("=")


def _json_status(code: int, reason: str, message: str, *, retry_seconds: int = 0) -> str:
    """The same refusal as the body a REST client reads (google.rpc.Status in proto3 JSON)."""
    details: list[dict[str, Any]] = [
        {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason, "domain": DOMAIN, "metadata": {}}
    ]
    if retry_seconds:
        details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{retry_seconds}s"})
    return json.dumps({"code": code, "message": message, "details": details}, separators=(",", ":"))


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
                action["max_stream_duration"]["max_stream_duration"] = _seconds(plan.default_deadline_seconds)
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
            "@type": _typed("extensions.upstreams.http.v3.HttpProtocolOptions"),
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
                "@type": _typed("extensions.transport_sockets.tls.v3.UpstreamTlsContext"),
                "sni": host,
                "common_tls_context": {
                    "validation_context": {"trusted_ca": {"filename": "/etc/ssl/certs/ca-certificates.crt"}}
                },
            },
        }
    return cluster


def _jwt_filter(plan: EdgePlan) -> dict[str, Any]:
    open_matches: list[dict[str, Any]] = [{"match": {"prefix": HEALTH_PREFIX}}, {"match": {"path": OPENAPI_PATH}}]
    if plan.reflection == "open":
        open_matches += [{"match": {"prefix": p}} for p in REFLECTION_PREFIXES]
    return {
        "name": JWT_FILTER,
        "typed_config": {
            "@type": _typed("extensions.filters.http.jwt_authn.v3.JwtAuthentication"),
            "providers": {
                PROVIDER: {
                    "issuer": plan.issuer,
                    "audiences": [plan.audience],
                    "forward": True,  # the services verify it again (a call that bypasses the edge is checked too)
                    "require_expiration": True,
                    "clock_skew_seconds": int(plan.leeway_seconds),
                    "remote_jwks": {
                        "http_uri": {"uri": plan.jwks_url, "cluster": JWKS_CLUSTER, "timeout": "2s"},
                        "cache_duration": _seconds(plan.jwks_refresh_seconds),
                        "async_fetch": {"fast_listener": False, "failed_refetch_duration": "1s"},
                        "retry_policy": {"num_retries": 3},
                    },
                    "claim_to_headers": [{"header_name": SUBJECT_HEADER, "claim_name": "sub"}],
                    "jwt_cache_config": {"jwt_cache_size": 4096},
                    "failed_status_in_metadata": JWT_FAILURE_KEY,
                }
            },
            "rules": [*open_matches, {"match": {"prefix": "/"}, "requires": {"provider_name": PROVIDER}}],
            "bypass_cors_preflight": True,
        },
    }


# Marks a call that came as REST/JSON (neither gRPC nor gRPC-Web, which the grpc_web filter has turned into gRPC
# already), before the transcoder makes it gRPC: Envoy's own refusals then answer it in JSON (local_reply_config).
# A client stream over REST comes as a JSON array of its messages (what the transcoder reads) or, with
# `content-type: application/x-ndjson`, one message per line, which this turns into that array first.
REST_MARKER = "x-storeplane-rest"
REST_REQUESTS = """
function envoy_on_request(handle)
  local headers = handle:headers()
  local kind = headers:get("content-type")
  if kind ~= nil and string.find(kind, "application/grpc", 1, true) == 1 then
    headers:remove("MARKER")
    return
  end
  headers:replace("MARKER", "1")
  if headers:get(":method") == "GET" and streams_out(headers:get(":path")) then
    handle:streamInfo():dynamicMetadata():set("storeplane", "ndjson", "1")
  end
  if kind == nil or string.find(kind, "application/x-ndjson", 1, true) ~= 1 then
    return
  end
  local body = handle:body()
  local lines = {}
  if body ~= nil and body:length() > 0 then
    for line in string.gmatch(body:getBytes(0, body:length()), "[^\\r\\n]+") do
      if string.find(line, "%S") then
        lines[#lines + 1] = line
      end
    end
    body:setBytes("[" .. table.concat(lines, ",") .. "]")
  end
  headers:replace("content-type", "application/json")
end

function envoy_on_response(handle)
  local marked = handle:streamInfo():dynamicMetadata():get("storeplane")
  if marked ~= nil and marked["ndjson"] == "1" then
    handle:headers():replace("content-type", "application/x-ndjson")
  end
end
"""


def _rest_requests(services: Sequence[ServiceDescriptor]) -> dict[str, Any]:
    # A server stream answers one JSON message per line: its REST paths are told as what they are.
    patterns = [_lua_pattern(path) for path in server_stream_paths(services)]
    matcher = "\n".join(
        [
            "local STREAMS = {" + ", ".join(json.dumps(p) for p in patterns) + "}",
            "function streams_out(path)",
            '  local bare = string.match(path, "^[^?]*")',
            "  for _, pattern in ipairs(STREAMS) do",
            "    if string.find(bare, pattern) then",
            "      return true",
            "    end",
            "  end",
            "  return false",
            "end",
        ]
    )
    return {
        "name": "envoy.filters.http.lua",
        "typed_config": {
            "@type": _typed("extensions.filters.http.lua.v3.Lua"),
            "default_source_code": {"inline_string": matcher + REST_REQUESTS.replace("MARKER", REST_MARKER)},
        },
    }


def server_stream_paths(services: Sequence[ServiceDescriptor]) -> list[str]:
    """The GET path templates of every server-streaming RPC's REST bindings."""
    from google.api import annotations_pb2

    paths: list[str] = []
    for service in services:
        for method in service.methods:
            if not method.server_streaming or method.client_streaming:
                continue
            rule = method.GetOptions().Extensions[annotations_pb2.http]
            paths += [r.get for r in (rule, *rule.additional_bindings) if r.get]
    return paths


def _lua_pattern(template: str) -> str:
    """A Lua pattern matching the path template (`{x}` one segment, `{x=**}` the rest), anchored at both ends."""
    out, i = "^", 0
    while i < len(template):
        char = template[i]
        if char == "{":
            end = template.index("}", i)
            out += ".+" if template[i:end].endswith("**") else "[^/]+"
            i = end + 1
            continue
        out += "%" + char if char in "^$()%.[]*+-?" else char
        i += 1
    return out + "$"


def _transcoder(services: Sequence[ServiceDescriptor], plan: EdgePlan) -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.grpc_json_transcoder",
        "typed_config": {
            "@type": _typed("extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder"),
            "proto_descriptor": str(plan.descriptor_set),
            "services": [s.full_name for s in services],
            "convert_grpc_status": True,
            "print_options": {
                "add_whitespace": False,
                "always_print_primitive_fields": True,
                "always_print_enums_as_ints": False,
                "preserve_proto_field_names": False,
                "stream_newline_delimited": True,
            },
            "request_validation_options": {
                "reject_unknown_query_parameters": True,
                "reject_binding_body_field_collisions": True,
            },
            "max_request_body_size": plan.max_message_bytes,
            "max_response_body_size": plan.max_message_bytes,
        },
    }


def _rate_limit_filter(plan: EdgePlan) -> dict[str, Any]:
    descriptors: list[dict[str, Any]] = []
    if plan.rate_per_second:
        descriptors.append(
            {
                # No value: one bucket per distinct subject (dynamic descriptors, kept in an LRU).
                "entries": [{"key": "subject"}],
                "token_bucket": _bucket(plan.rate_per_second, plan.rate_burst),
            }
        )
    return {
        "name": "envoy.filters.http.local_ratelimit",
        "typed_config": {
            "@type": _typed("extensions.filters.http.local_ratelimit.v3.LocalRateLimit"),
            "stat_prefix": "subject_rate_limit",
            # The whole listener's bucket: never the one that limits (descriptors do), but Envoy wants one.
            "token_bucket": _bucket(1_000_000, 1_000_000),
            "filter_enabled": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}},
            "filter_enforced": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}},
            "descriptors": descriptors,
            "max_dynamic_descriptors": plan.rate_limit_subjects,
            "rate_limited_as_resource_exhausted": True,
            "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
            "response_headers_to_add": [{"header": {"key": "retry-after", "value": "1"}}],
            "rate_limits": [
                {"actions": [{"request_headers": {"header_name": SUBJECT_HEADER, "descriptor_key": "subject"}}]}
            ],
        },
    }


def _anonymous_limit_filter(plan: EdgePlan) -> dict[str, Any]:
    """Before the token check: calls that carry no token at all spend their client address's budget."""
    return {
        "name": "envoy.filters.http.local_ratelimit.anonymous",
        "typed_config": {
            "@type": _typed("extensions.filters.http.local_ratelimit.v3.LocalRateLimit"),
            "stat_prefix": "anonymous_rate_limit",
            "token_bucket": _bucket(1_000_000, 1_000_000),
            "filter_enabled": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}},
            "filter_enforced": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}},
            "descriptors": [
                {
                    "entries": [{"key": "anonymous", "value": "yes"}, {"key": "remote_address"}],
                    "token_bucket": _bucket(plan.anonymous_rate_per_second, plan.anonymous_burst),
                }
            ],
            "max_dynamic_descriptors": plan.rate_limit_subjects,
            "rate_limited_as_resource_exhausted": True,
            "response_headers_to_add": [{"header": {"key": "retry-after", "value": "1"}}],
            "rate_limits": [
                {
                    "actions": [
                        {
                            "header_value_match": {
                                "descriptor_key": "anonymous",
                                "descriptor_value": "yes",
                                "expect_match": False,
                                "headers": [{"name": "authorization", "present_match": True}],
                            }
                        },
                        {"remote_address": {}},
                    ]
                }
            ],
        },
    }


def _bucket(rate: int, burst: int) -> dict[str, Any]:
    return {"max_tokens": max(burst, rate), "tokens_per_fill": rate, "fill_interval": "1s"}


def _cors_policy(plan: EdgePlan) -> dict[str, Any]:
    return {
        "@type": _typed("extensions.filters.http.cors.v3.CorsPolicy"),
        "allow_origin_string_match": [{"exact": origin} for origin in plan.cors_origins],
        "allow_methods": "GET,POST,PUT,PATCH,DELETE,OPTIONS",
        "allow_headers": CORS_HEADERS,
        "expose_headers": CORS_EXPOSED,
        "max_age": "600",
    }


REST_REQUEST = {"header_filter": {"header": {"name": REST_MARKER, "present_match": True}}}


def _local_reply_config() -> dict[str, Any]:
    """Envoy's own refusals in the platform's form: the reason in ErrorInfo for gRPC (grpc-status-details-bin) and
    a google.rpc.Status JSON body for REST, as a service's refusal reads."""
    mappers: list[dict[str, Any]] = []
    grpc_request = {"header_filter": {"header": {"name": REST_MARKER, "present_match": False}}}
    refusals = [(message, *answer) for message, answer in JWT_REFUSALS.items()]
    for message, reason, text in refusals:
        jwt_failed = {
            "metadata_filter": {
                "matcher": {
                    "filter": JWT_FILTER,
                    "path": [{"key": JWT_FAILURE_KEY}, {"key": "message"}],
                    "value": {"string_match": {"exact": message}},
                },
                "match_if_key_not_found": False,
            }
        }
        mappers += _refusal_mappers(jwt_failed, grpc_request, code_pb2.UNAUTHENTICATED, 401, reason, text)
    any_jwt_failure = {
        "metadata_filter": {
            "matcher": {
                "filter": JWT_FILTER,
                "path": [{"key": JWT_FAILURE_KEY}, {"key": "message"}],
                "value": {"present_match": True},
            },
            "match_if_key_not_found": False,
        }
    }
    mappers += _refusal_mappers(any_jwt_failure, grpc_request, code_pb2.UNAUTHENTICATED, 401, *TOKEN_INVALID)
    limited = _status_is(429)
    mappers += _refusal_mappers(
        limited,
        grpc_request,
        code_pb2.RESOURCE_EXHAUSTED,
        429,
        "RATE_LIMITED",
        "too many calls: slow down and retry after the delay given",
        retry_seconds=1,
    )
    for status, (code, reason) in EDGE_HTTP_REFUSALS.items():
        mappers.append(
            {
                "filter": {"and_filter": {"filters": [_status_is(status), REST_REQUEST]}},
                "body_format_override": {
                    "json_format": {
                        "code": code,
                        "message": "%LOCAL_REPLY_BODY%",
                        "details": [
                            {
                                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                                "reason": reason,
                                "domain": DOMAIN,
                                "metadata": {"details": "%RESPONSE_CODE_DETAILS%"},
                            }
                        ],
                    },
                    "content_type": "application/json",
                },
            }
        )
    return {"mappers": mappers}


# What Envoy itself answers a REST client (a body the transcoder cannot read, a path no route has, a backend it cannot
# reach): the HTTP status stays, the body becomes a google.rpc.Status of the matching code, as a service's error reads.
EDGE_HTTP_REFUSALS: Mapping[int, tuple[int, str]] = {
    400: (code_pb2.INVALID_ARGUMENT, "MALFORMED_REQUEST"),
    404: (code_pb2.NOT_FOUND, "NO_SUCH_ROUTE"),
    413: (code_pb2.INVALID_ARGUMENT, "REQUEST_TOO_LARGE"),
    503: (code_pb2.UNAVAILABLE, "BACKEND_UNAVAILABLE"),
    504: (code_pb2.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED"),
}


def _status_is(status: int) -> dict[str, Any]:
    comparison = {"op": "EQ", "value": {"default_value": status, "runtime_key": f"storeplane.edge.status_{status}"}}
    return {"status_code_filter": {"comparison": comparison}}


def _refusal_mappers(
    when: dict[str, Any],
    grpc_request: dict[str, Any],
    code: int,
    http_status: int,
    reason: str,
    text: str,
    *,
    retry_seconds: int = 0,
) -> list[dict[str, Any]]:
    over_grpc: dict[str, Any] = {
        "filter": {"and_filter": {"filters": [when, grpc_request]}},
        "headers_to_add": [
            {
                "header": {
                    "key": "grpc-status-details-bin",
                    "value": _status_header(code, reason, text, retry_seconds=retry_seconds),
                },
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            },
        ],
        # For a gRPC caller Envoy sends the body as grpc-message: the same text as the Status in the details.
        "body": {"inline_string": text},
    }
    if http_status == 401:  # jwt_authn answers some refusals (another audience) 403: still UNAUTHENTICATED
        over_grpc["status_code"] = 401
    over_http = {
        "filter": {"and_filter": {"filters": [when, REST_REQUEST]}},
        "status_code": http_status,
        "body": {"inline_string": _json_status(code, reason, text, retry_seconds=retry_seconds)},
        "body_format_override": {
            "text_format_source": {"inline_string": "%LOCAL_REPLY_BODY%"},
            "content_type": "application/json",
        },
    }
    return [over_grpc, over_http]


# One JSON line per call, in the shape of the services' own RPC lines (logger storeplane.rpc, message rpc, trace and
# span ids), plus what only the edge knows. Never a token nor a body: headers are named one by one.
ACCESS_LOG_FORMAT = {
    "time": "%START_TIME(%Y-%m-%dT%H:%M:%S.%3fZ)%",
    "level": "INFO",
    "logger": "storeplane.rpc",
    "message": "rpc",
    "service": "gateway",
    "grpc_method": "%REQ(:PATH)%",
    "grpc_code": "%GRPC_STATUS%",
    "ms": "%DURATION%",
    "http_method": "%REQ(:METHOD)%",
    "http_path": "%REQ(X-ENVOY-ORIGINAL-PATH)%",
    "http_status": "%RESPONSE_CODE%",
    "protocol": "%PROTOCOL%",
    "upstream_ms": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    "bytes_in": "%BYTES_RECEIVED%",
    "bytes_out": "%BYTES_SENT%",
    "subject": "%REQ(X-STOREPLANE-SUBJECT)%",
    "trace_id": "%TRACE_ID%",
    "span_id": "%SPAN_ID%",
    "client": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
    "flags": "%RESPONSE_FLAGS%",
    "details": "%RESPONSE_CODE_DETAILS%",
}


def _access_log() -> list[dict[str, Any]]:
    return [
        {
            "name": "envoy.access_loggers.stderr",
            "typed_config": {
                "@type": _typed("extensions.access_loggers.stream.v3.StderrAccessLog"),
                "log_format": {"json_format": ACCESS_LOG_FORMAT, "json_format_options": {"sort_properties": False}},
            },
        }
    ]


def _tracing(plan: EdgePlan) -> dict[str, Any]:
    config: dict[str, Any] = {"@type": _typed("config.trace.v3.OpenTelemetryConfig"), "service_name": plan.service_name}
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
    # The CORS filter answers a preflight only on a route that forwards (never on a direct response), so a REST
    # path's OPTIONS gets one: the filter answers it; an OPTIONS that is no preflight finds no backend (503).
    routes.append(
        {
            "name": "preflight",
            "match": {"prefix": "/", "headers": [{"name": ":method", "string_match": {"exact": "OPTIONS"}}]},
            "route": {"cluster": PREFLIGHT_CLUSTER, "timeout": "1s"},
        }
    )
    routes.append(
        {
            "name": "unrouted",
            "match": {"prefix": "/"},
            "direct_response": {"status": 404, "body": {"inline_string": "no such API"}},
        }
    )
    virtual_host: dict[str, Any] = {"name": "storeplane", "domains": ["*"], "routes": routes}
    if plan.cors_origins:
        virtual_host["typed_per_filter_config"] = {"envoy.filters.http.cors": _cors_policy(plan)}
    http_filters: list[dict[str, Any]] = [
        {
            "name": "envoy.filters.http.cors",
            "typed_config": {"@type": _typed("extensions.filters.http.cors.v3.Cors")},
        },
        {
            "name": "envoy.filters.http.grpc_web",
            "typed_config": {"@type": _typed("extensions.filters.http.grpc_web.v3.GrpcWeb")},
        },
    ]
    http_filters.append(_rest_requests(services))
    if plan.anonymous_rate_per_second:
        http_filters.append(_anonymous_limit_filter(plan))
    http_filters += [_jwt_filter(plan), _transcoder(services, plan)]
    if plan.rate_per_second:
        http_filters.append(_rate_limit_filter(plan))
    http_filters.append(
        {
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": _typed("extensions.filters.http.router.v3.Router")},
        }
    )
    manager: dict[str, Any] = {
        "@type": _typed("extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"),
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
        "access_log": _access_log() if plan.access_log else [],
        "local_reply_config": _local_reply_config(),
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
                "@type": _typed("extensions.transport_sockets.tls.v3.DownstreamTlsContext"),
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
        "@type": _typed("extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"),
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
                "typed_config": {"@type": _typed("extensions.filters.http.router.v3.Router")},
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
                        "@type": _typed(
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
            "@type": _typed("extensions.transport_sockets.tls.v3.Secret"),
            "name": "edge_certificate",
            "tls_certificate": {"certificate_chain": {"filename": cert_file}, "private_key": {"filename": key_file}},
        }
    ]
    if client_ca_file:
        resources.append(
            {
                "@type": _typed("extensions.transport_sockets.tls.v3.Secret"),
                "name": "edge_client_ca",
                "validation_context": {"trusted_ca": {"filename": client_ca_file}},
            }
        )
    return {"resources": resources}


def load_descriptor_set(path: Path) -> descriptor_pb2.FileDescriptorSet:
    files = descriptor_pb2.FileDescriptorSet()
    files.ParseFromString(path.read_bytes())
    return files
