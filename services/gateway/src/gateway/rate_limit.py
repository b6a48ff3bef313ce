"""The gateway's rate limit per caller: each token subject may make RATE_LIMIT_PER_SECOND calls a second with bursts
of RATE_LIMIT_BURST, counted by `limits` in memory or, one budget for every replica, in Redis."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
from limits import RateLimitItemPerSecond
from limits.errors import StorageError
from limits.storage import MemoryStorage, RedisStorage, Storage
from limits.strategies import MovingWindowRateLimiter
from redis.backoff import NoBackoff
from redis.retry import Retry

from storeplane_runtime.auth.interceptor import AUTH_REFUSED
from storeplane_runtime.identity import current_identity
from storeplane_runtime.interceptors import HandlerWrapper
from storeplane_runtime.status import build_status

__all__ = ["RATE_LIMITED", "RateLimitInterceptor", "SubjectBudget"]

log = logging.getLogger(__name__)
audit = logging.getLogger("storeplane.audit")  # beside the AuthInterceptor's refusals: one audit trail

RATE_LIMITED = "RATE_LIMITED"
# A Redis that has not answered within this long is down: no till waits on it longer than this.
STORAGE_TIMEOUT_SECONDS = 0.25
# While Redis is down calls pass unlimited, and one call looks at it again this often.
STORAGE_RETRY_SECONDS = 5.0
# A subject refused over and over gets one audit line this often (every refusal is counted in AUTH_REFUSED).
AUDIT_EVERY_SECONDS = 1.0
AUDITED_SUBJECTS = 10_000  # bound on the subjects remembered for that
MIN_RETRY_SECONDS = 0.001
SWEEP_SECONDS = 1.0  # how often calls that left their window are dropped from memory

Behaviour = Callable[..., Any]


class SubjectBudget:
    """The calls each subject may still make.

    `limits` has no token bucket. A moving window of B calls per B/R seconds keeps the promises of a bucket of rate R
    and burst B: never more than B calls at once, and at most B + R·t calls in any t seconds (each window of B/R
    seconds admits B, i.e. R a second). Where they differ: after a burst a bucket refills R a second, the window all at
    once when the burst's calls leave it. Moving rather than sliding-window-counter: exact (the counter estimates from
    two fixed windows and admits more than B in some windows), at the same cost of one Redis script per call.
    """

    def __init__(self, per_second: int, burst: int, *, storage_url: str = "", key_prefix: str = "") -> None:
        if per_second < 1 or burst < per_second or burst % per_second:
            raise ValueError(f"burst {burst} must be a whole multiple of the rate {per_second}")
        self.item = RateLimitItemPerSecond(burst, burst // per_second, namespace="calls")
        self.storage = _storage(storage_url, key_prefix)
        self.limiter = MovingWindowRateLimiter(self.storage)
        base = self.storage.base_exceptions
        self._storage_errors: tuple[type[BaseException], ...] = (
            StorageError,
            *(base if isinstance(base, tuple) else (base,)),
        )
        self._down = False
        self._retry_at = 0.0
        self._lock = threading.Lock()

    @property
    def window_seconds(self) -> int:
        return self.item.get_expiry()

    def take(self, subject: str) -> float | None:
        """Spend one of `subject`'s calls: None when the call may go ahead, else the seconds until it may be retried.
        While the storage fails every call goes ahead (a till must keep selling), with a warning when that starts."""
        if self._down and not self._may_look_again():
            return None
        try:
            if self.limiter.hit(self.item, subject):
                retry = None
            else:
                reset, _remaining = self.limiter.get_window_stats(self.item, subject)
                retry = max(MIN_RETRY_SECONDS, reset - time.time())
        except self._storage_errors as exc:
            self._failed(exc)
            return None
        if self._down:
            self._answers_again()
        return retry

    def close(self) -> None:
        if isinstance(self.storage, _SweptMemoryStorage):
            self.storage.close()
        if isinstance(self.storage, RedisStorage):
            client: Any = self.storage.get_connection()  # a redis.Redis, typed by `limits` without its close()
            client.close()

    def _may_look_again(self) -> bool:
        # One call at a time tries a storage that failed, once a period; the others do not wait on it meanwhile.
        now = time.monotonic()
        with self._lock:
            if now < self._retry_at:
                return False
            self._retry_at = now + STORAGE_RETRY_SECONDS
            return True

    def _failed(self, exc: BaseException) -> None:
        with self._lock:
            first = not self._down
            self._down = True
            self._retry_at = time.monotonic() + STORAGE_RETRY_SECONDS
        if first:
            log.warning(
                "rate limit storage unreachable: calls pass unlimited until it answers again",
                extra={"error": str(exc)[:200], "retry_seconds": STORAGE_RETRY_SECONDS},
            )

    def _answers_again(self) -> None:
        with self._lock:
            was_down, self._down = self._down, False
        if was_down:
            log.warning("rate limit storage answers again: calls are limited again")


class _SweptMemoryStorage(MemoryStorage):
    """`limits`' memory storage with its expired entries swept by one thread of ours, once a second. Its own way
    starts a new Timer thread from the call path every 10 ms while calls come, and starting a thread costs that call
    0.1-0.5 ms on a busy 2-core box (a gateway hop is ~1 ms). The sweep only trims memory: windows are decided by
    the entries' times whether swept or not."""

    def __init__(self) -> None:
        super().__init__()
        self._expire: Callable[[], None] = getattr(self, "_MemoryStorage__expire_events")  # noqa: B009
        self._stopped = threading.Event()
        threading.Thread(target=self._sweep, name="rate-limit-sweeper", daemon=True).start()

    def _MemoryStorage__schedule_expiry(self) -> None:  # what the call path calls instead of starting a Timer
        return None

    def _sweep(self) -> None:
        while not self._stopped.wait(SWEEP_SECONDS):
            self._expire()

    def close(self) -> None:
        self._stopped.set()


def _storage(url: str, key_prefix: str) -> Storage:
    if not url:
        return _SweptMemoryStorage()
    options: dict[str, Any] = {
        "socket_connect_timeout": STORAGE_TIMEOUT_SECONDS,
        "socket_timeout": STORAGE_TIMEOUT_SECONDS,
        # One immediate retry: a pooled connection Redis closed (a restart) is replaced, anything else fails fast.
        "retry": Retry(NoBackoff(), 1),
    }
    # Nothing connects here: a Redis down at start only makes the first calls fail open.
    return RedisStorage(url, key_prefix=key_prefix or RedisStorage.PREFIX, **options)


class RateLimitInterceptor(HandlerWrapper):
    """Refuses a call of a subject past its budget: RESOURCE_EXHAUSTED with ErrorInfo RATE_LIMITED and RetryInfo saying
    when to try again. It runs inside the AuthInterceptor, whose verified identity names the subject; a call without
    one (a health check, open reflection) is not counted."""

    def __init__(self, budget: SubjectBudget, *, domain: str) -> None:
        self.budget = budget
        self.domain = domain
        super().__init__()  # wrapped handlers by method (HandlerWrapper): made once per method, like the Router's
        self._audited: dict[str, float] = {}

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        if handler.request_streaming:
            inner: Behaviour = handler.stream_unary or handler.stream_stream  # type: ignore[assignment]
        else:
            inner = handler.unary_unary or handler.unary_stream  # type: ignore[assignment]
        take, refuse = self.budget.take, self._refuse

        def limited(request: Any, context: grpc.ServicerContext) -> Any:
            identity = current_identity()
            if identity is not None:
                retry = take(identity.subject)
                if retry is not None:
                    refuse(context, method, identity.subject, retry)
            return inner(request, context)

        make = _HANDLER_OF_KIND[(bool(handler.request_streaming), bool(handler.response_streaming))]
        return make(limited, handler.request_deserializer, handler.response_serializer)

    def _refuse(self, context: grpc.ServicerContext, method: str, subject: str, retry: float) -> None:
        """Count and audit the refusal (subject and method; never the token, never a body), then end the call."""
        AUTH_REFUSED.labels(method, RATE_LIMITED).inc()
        now = time.monotonic()
        last = self._audited.get(subject)
        if last is None or now - last >= AUDIT_EVERY_SECONDS:
            if len(self._audited) >= AUDITED_SUBJECTS:
                self._audited.clear()
            self._audited[subject] = now
            audit.warning(
                "call refused",
                extra={
                    "subject": subject,
                    "grpc_method": method,
                    "reason": RATE_LIMITED,
                    "retry_after_seconds": round(retry, 3),
                },
            )
        amount, window = self.budget.item.amount, self.budget.window_seconds
        context.abort_with_status(
            build_status(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"rate limited: at most {amount} calls in {window} s per caller; retry in {retry:.3f} s",
                reason=RATE_LIMITED,
                domain=self.domain,
                metadata={"limit": str(amount), "window_seconds": str(window)},
                retry_delay_seconds=retry,
            )
        )


_HANDLER_OF_KIND: dict[tuple[bool, bool], Callable[..., grpc.RpcMethodHandler]] = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}
