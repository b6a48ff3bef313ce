"""The one authorisation interceptor, run by the gateway (token and scopes, bodies untouched) and again by every
service (everything, the stores a request names included): the `pos.common.v1.auth` declarations made law."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any, NoReturn

import grpc
from prometheus_client import Counter

from storeplane_runtime.auth.rules import MethodRule, stores_named
from storeplane_runtime.auth.tokens import TokenRefused, TokenVerifier
from storeplane_runtime.identity import Identity, acting_as
from storeplane_runtime.interceptors import HandlerWrapper
from storeplane_runtime.status import build_status

__all__ = ["AUTH_REFUSED", "HEALTH_PREFIX", "REFLECTION_PREFIXES", "AuthInterceptor"]

log = logging.getLogger("storeplane.audit")

HEALTH_PREFIX = "/grpc.health.v1.Health/"
REFLECTION_PREFIXES = ("/grpc.reflection.v1alpha.ServerReflection/", "/grpc.reflection.v1.ServerReflection/")

AUTH_REFUSED = Counter(
    "storeplane_auth_refused_total", "Calls refused by authentication or authorisation", ["method", "reason"]
)

Behaviour = Callable[..., Any]


class AuthInterceptor(HandlerWrapper):
    """Refuses a call unless its bearer token verifies, carries every scope its RPC declares and (with
    `check_stores`) allows every store its request names, on every message of a client stream. An RPC that declares
    nothing is refused; health checks (and reflection, when `open_reflection`) need no token."""

    def __init__(
        self,
        verifier: TokenVerifier,
        rules: Mapping[str, MethodRule],
        *,
        domain: str,
        check_stores: bool = True,
        open_reflection: bool = True,
        open_methods: Collection[str] = (),
    ) -> None:
        self.verifier = verifier
        self.rules = dict(rules)
        self.domain = domain
        self.check_stores = check_stores
        self.open_prefixes = (HEALTH_PREFIX, *(REFLECTION_PREFIXES if open_reflection else ()))
        self.open_methods = frozenset(open_methods)
        super().__init__()

    def passes(self, method: str) -> bool:
        """Health and reflection (unless closed) and the open methods need no token."""
        return method.startswith(self.open_prefixes) or method in self.open_methods

    # One wrapper per method, made once (HandlerWrapper): the checks run in the call's own thread (not gRPC's polling
    # thread), and interceptors outside this one find the same handler every time (they cache by it).
    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        rule = self.rules.get(method)
        if rule is None:

            def undeclared(_request: Any, context: grpc.ServicerContext) -> Any:
                self.refuse(
                    context,
                    method,
                    "",
                    grpc.StatusCode.PERMISSION_DENIED,
                    "METHOD_NOT_DECLARED",
                    "this RPC declares no authorisation and is refused",
                    {},
                )

            return _replace(handler, undeclared)
        check = self.check_stores and rule.store_scoped
        if handler.request_streaming:
            inner: Behaviour = handler.stream_unary or handler.stream_stream  # type: ignore[assignment]

            def streamed(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
                identity = self._admit(rule, context)
                with acting_as(identity):
                    checked = self._each(rule, identity, requests, context) if check else requests
                    if handler.response_streaming:
                        return _iterate_as(identity, inner(checked, context))
                    return inner(checked, context)

            return _replace(handler, streamed)
        inner = handler.unary_unary or handler.unary_stream  # type: ignore[assignment]

        def unary(request: Any, context: grpc.ServicerContext) -> Any:
            identity = self._admit(rule, context)
            with acting_as(identity):
                if check:
                    self._check_stores(rule, identity, request, context)
                if handler.response_streaming:
                    return _iterate_as(identity, inner(request, context))
                return inner(request, context)

        return _replace(handler, unary)

    def _admit(self, rule: MethodRule, context: grpc.ServicerContext) -> Identity:
        """The caller's verified identity, if its token is good and carries the RPC's scopes; else the call ends."""
        try:
            identity = self.verifier.verify(_bearer(context.invocation_metadata()))
        except TokenRefused as refused:
            self.refuse(context, rule.method, "", grpc.StatusCode.UNAUTHENTICATED, refused.reason, refused.message, {})
            raise  # not reached: refuse() ends the call
        missing = identity.missing_scopes(rule.scopes)
        if missing:
            self.refuse(
                context,
                rule.method,
                identity.subject,
                grpc.StatusCode.PERMISSION_DENIED,
                "MISSING_SCOPE",
                f"the token lacks scope {missing[0]!r}",
                {"scope": missing[0], "missing_scopes": " ".join(missing)},
            )
        return identity

    def _check_stores(self, rule: MethodRule, identity: Identity, message: Any, context: grpc.ServicerContext) -> None:
        """Every store `message` names at the RPC's paths must be one the caller may act for."""
        if identity.all_stores:
            return
        for path in rule.store_paths:
            for store in stores_named(message, path):
                if not identity.may_act_for(store):
                    self.refuse(
                        context,
                        rule.method,
                        identity.subject,
                        grpc.StatusCode.PERMISSION_DENIED,
                        "STORE_NOT_ALLOWED",
                        f"not allowed for store {store[:64]!r}",
                        {"store_id": store[:64], "field": ".".join(path)},
                        store=store[:64],
                    )

    def _each(
        self, rule: MethodRule, identity: Identity, messages: Iterator[Any], context: grpc.ServicerContext
    ) -> Iterator[Any]:
        """The stream, each message checked as the handler reads it; the first one before the handler starts, so a
        stream that opens with another store's data is refused whatever the handler does."""
        first = next(messages, None)
        if first is None:
            return iter(())
        self._check_stores(rule, identity, first, context)
        return self._rest(rule, identity, first, messages, context)

    def _rest(
        self, rule: MethodRule, identity: Identity, first: Any, messages: Iterator[Any], context: grpc.ServicerContext
    ) -> Iterator[Any]:
        yield first
        for message in messages:
            self._check_stores(rule, identity, message, context)  # a bad one ends the stream before it is handled
            yield message

    def refuse(
        self,
        context: grpc.ServicerContext,
        method: str,
        subject: str,
        code: grpc.StatusCode,
        reason: str,
        message: str,
        metadata: Mapping[str, str],
        store: str = "",
    ) -> NoReturn:
        """Audit the refusal (never the token, never a body) and end the call with its status."""
        AUTH_REFUSED.labels(method, reason).inc()
        log.warning(
            "call refused",
            extra={"subject": subject, "grpc_method": method, "store_id": store, "reason": reason},
        )
        context.abort_with_status(build_status(code, message, reason=reason, domain=self.domain, metadata=metadata))
        raise AssertionError("abort_with_status returned")  # it raises; this keeps the types honest


def _iterate_as(identity: Identity, responses: Iterator[Any]) -> Iterator[Any]:
    # A response stream runs its body as it is iterated, after the handler returned: the identity must be current
    # then too.
    with acting_as(identity):
        yield from responses


def _replace(handler: grpc.RpcMethodHandler, behaviour: Behaviour) -> grpc.RpcMethodHandler:
    """The same kind of handler (and (de)serialisers) with another behaviour."""
    args = (behaviour, handler.request_deserializer, handler.response_serializer)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(*args)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(*args)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(*args)
    return grpc.unary_unary_rpc_method_handler(*args)


def _bearer(metadata: Any) -> str:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return ""
