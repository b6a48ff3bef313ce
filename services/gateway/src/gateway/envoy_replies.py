"""What Envoy answers by itself, in the platform's form (the kit's reasons in ErrorInfo, google.rpc.Status JSON for
REST), and the JSON access line of each call."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from gateway.envoy_filters import JWT_FAILURE_KEY, JWT_FILTER, REST_MARKER
from gateway.envoy_plan import typed

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


REST_REQUEST = {"header_filter": {"header": {"name": REST_MARKER, "present_match": True}}}


def local_reply_config() -> dict[str, Any]:
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
    # A request Envoy refuses before any filter has looked at it (a path it cannot normalise, say) carries no marker:
    # when it is no gRPC call, its refusal reads as the others.
    not_grpc = {
        "header": {"name": "content-type", "string_match": {"prefix": "application/grpc"}, "invert_match": True}
    }
    mappers.append(
        {
            "filter": {
                "and_filter": {
                    "filters": [
                        _status_is(400),
                        {
                            "or_filter": {
                                "filters": [
                                    {"header_filter": not_grpc},
                                    {"header_filter": {"header": {"name": "content-type", "present_match": False}}},
                                ]
                            }
                        },
                    ]
                }
            },
            "body_format_override": _status_body(code_pb2.INVALID_ARGUMENT, "MALFORMED_REQUEST"),
        }
    )
    return {"mappers": mappers}


def _status_body(code: int, reason: str) -> dict[str, Any]:
    return {
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
    }


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


def access_log_config() -> list[dict[str, Any]]:
    return [
        {
            "name": "envoy.access_loggers.stderr",
            "typed_config": {
                "@type": typed("extensions.access_loggers.stream.v3.StderrAccessLog"),
                "log_format": {"json_format": ACCESS_LOG_FORMAT, "json_format_options": {"sort_properties": False}},
            },
        }
    ]
