"""The HTTP filters of the edge's listener, in their order: the REST marker and newline-delimited uploads (Lua), the
budget of calls without a token, the token check, the REST/JSON transcoder, the budget per token subject, and CORS."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from google.protobuf.descriptor import ServiceDescriptor

from gateway.envoy_plan import EdgePlan, duration, typed

JWKS_CLUSTER = "jwks"


PROVIDER = "storeplane"


# The verified subject, set by jwt_authn from the token (a client-sent copy is removed first): whose budget a call
# spends, and who the access log names.
SUBJECT_HEADER = "x-storeplane-subject"


HEALTH_PREFIX = "/grpc.health.v1.Health/"


REFLECTION_PREFIXES = ("/grpc.reflection.v1alpha.ServerReflection/", "/grpc.reflection.v1.ServerReflection/")


OPENAPI_PATH = "/openapi.json"


JWT_FILTER = "envoy.filters.http.jwt_authn"


JWT_FAILURE_KEY = "jwt_failure"


CORS_HEADERS = "authorization,content-type,idempotency-key,x-grpc-web,x-user-agent,grpc-timeout,traceparent,tracestate"


CORS_EXPOSED = "grpc-status,grpc-message,grpc-status-details-bin,retry-after,x-ratelimit-limit,x-ratelimit-remaining"


def jwt_filter(plan: EdgePlan) -> dict[str, Any]:
    open_matches: list[dict[str, Any]] = [{"match": {"prefix": HEALTH_PREFIX}}, {"match": {"path": OPENAPI_PATH}}]
    if plan.reflection == "open":
        open_matches += [{"match": {"prefix": p}} for p in REFLECTION_PREFIXES]
    return {
        "name": JWT_FILTER,
        "typed_config": {
            "@type": typed("extensions.filters.http.jwt_authn.v3.JwtAuthentication"),
            "providers": {
                PROVIDER: {
                    "issuer": plan.issuer,
                    "audiences": [plan.audience],
                    "forward": True,  # the services verify it again (a call that bypasses the edge is checked too)
                    "require_expiration": True,
                    "clock_skew_seconds": int(plan.leeway_seconds),
                    "remote_jwks": {
                        "http_uri": {"uri": plan.jwks_url, "cluster": JWKS_CLUSTER, "timeout": "2s"},
                        "cache_duration": duration(plan.jwks_refresh_seconds),
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
  if marked ~= nil and marked["ndjson"] == "1" and handle:headers():get(":status") == "200" then
    handle:headers():replace("content-type", "application/x-ndjson")
  end
end
"""


def rest_requests_filter(services: Sequence[ServiceDescriptor]) -> dict[str, Any]:
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
            # Skipped for gRPC and gRPC-Web calls (the tills'): Lua costs each call it runs for.
            "@type": "type.googleapis.com/envoy.extensions.common.matching.v3.ExtensionWithMatcher",
            "extension_config": {
                "name": "envoy.filters.http.lua",
                "typed_config": {
                    "@type": typed("extensions.filters.http.lua.v3.Lua"),
                    "default_source_code": {"inline_string": matcher + REST_REQUESTS.replace("MARKER", REST_MARKER)},
                },
            },
            "xds_matcher": {
                "matcher_list": {
                    "matchers": [
                        {
                            "predicate": {
                                "single_predicate": {
                                    "input": {
                                        "name": "content-type",
                                        "typed_config": {
                                            "@type": typed("type.matcher.v3.HttpRequestHeaderMatchInput"),
                                            "header_name": "content-type",
                                        },
                                    },
                                    "value_match": {"prefix": "application/grpc"},
                                }
                            },
                            "on_match": {
                                "action": {
                                    "name": "skip",
                                    "typed_config": {
                                        "@type": typed("extensions.filters.common.matcher.action.v3.SkipFilter")
                                    },
                                }
                            },
                        }
                    ]
                }
            },
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


def transcoder_filter(services: Sequence[ServiceDescriptor], plan: EdgePlan) -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.grpc_json_transcoder",
        "typed_config": {
            "@type": typed("extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder"),
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
                "reject_unknown_method": True,
                "reject_unknown_query_parameters": True,
                "reject_binding_body_field_collisions": True,
            },
            "max_request_body_size": plan.max_message_bytes,
            "max_response_body_size": plan.max_message_bytes,
        },
    }


def subject_limit_filter(plan: EdgePlan) -> dict[str, Any]:
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
            "@type": typed("extensions.filters.http.local_ratelimit.v3.LocalRateLimit"),
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


def anonymous_limit_filter(plan: EdgePlan) -> dict[str, Any]:
    """Before the token check: calls that carry no token at all spend their client address's budget."""
    return {
        "name": "envoy.filters.http.local_ratelimit.anonymous",
        "typed_config": {
            "@type": typed("extensions.filters.http.local_ratelimit.v3.LocalRateLimit"),
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


def cors_policy(plan: EdgePlan) -> dict[str, Any]:
    return {
        "@type": typed("extensions.filters.http.cors.v3.CorsPolicy"),
        "allow_origin_string_match": [{"exact": origin} for origin in plan.cors_origins],
        "allow_methods": "GET,POST,PUT,PATCH,DELETE,OPTIONS",
        "allow_headers": CORS_HEADERS,
        "expose_headers": CORS_EXPOSED,
        "max_age": "600",
    }
