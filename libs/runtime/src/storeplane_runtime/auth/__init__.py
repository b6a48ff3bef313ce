"""Authentication and authorisation of every call: bearer JWTs verified against the issuer's keys, the scopes and
stores each RPC declares in `pos.common.v1.auth` enforced by one interceptor, in the gateway and in every service.

The verified identity of a call is `storeplane_runtime.identity.current_identity()`.
"""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf import descriptor_pool

from storeplane_runtime.auth.interceptor import REFLECTION_PREFIXES, AuthInterceptor
from storeplane_runtime.auth.keys import KeySet, KeySetError
from storeplane_runtime.auth.rules import MethodRule, method_rules
from storeplane_runtime.auth.tokens import TokenRefused, TokenVerifier
from storeplane_runtime.settings import ServiceSettings, SettingsError

__all__ = ["AuthInterceptor", "KeySet", "MethodRule", "TokenRefused", "TokenVerifier", "auth_interceptor"]

REFLECTION_METHODS = ("ServerReflectionInfo",)


def auth_interceptor(
    settings: ServiceSettings, service_names: Sequence[str], *, check_stores: bool = True
) -> AuthInterceptor:
    """The interceptor of a process serving `service_names` (fully qualified), from its settings; a key set that
    cannot be read stops the process with one line."""
    try:
        keys = KeySet(
            file=settings.resolved_jwks_file(),
            url=settings.auth_jwks_url,
            refresh_seconds=settings.auth_jwks_refresh_seconds,
        )
    except KeySetError as exc:
        raise SettingsError(
            f"{settings.service_name}: {exc} (make run / make up create development keys under DATA_DIR/auth)"
        ) from None
    pool = descriptor_pool.Default()
    rules = method_rules(pool.FindServiceByName(name) for name in service_names)
    if settings.reflection == "token":  # any valid token may list the APIs
        for prefix in REFLECTION_PREFIXES:
            for name in REFLECTION_METHODS:
                rules[prefix + name] = MethodRule(prefix + name, ())
    return AuthInterceptor(
        TokenVerifier(
            keys,
            issuer=settings.auth_issuer,
            audience=settings.auth_audience,
            leeway_seconds=settings.auth_leeway_seconds,
        ),
        rules,
        domain=f"{settings.service_name}.storeplane",
        check_stores=check_stores,
        open_reflection=settings.reflection == "open",
    )
