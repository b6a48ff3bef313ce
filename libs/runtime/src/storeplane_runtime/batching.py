"""Group commit for a hot mutating call: calls of one method that arrive together are done in one transaction.

Each call still stands alone to its caller: its own request id (done once, see `idempotency.run_batch`), its own
answer or error, its own trace context on the events it causes. What the calls share is the cost around them: one
BEGIN and COMMIT, one statement per step for all of them instead of one per call each, one WAL flush.

No thread of its own: the handler threads take turns at leading. A call joins the queue; if fewer than `lanes`
batches run, its thread leads: it takes up to `max_batch` queued calls, runs them, and again, until its own call is
done; then it hands the lead to the first call still waiting. Calls that conflict (the same key, or the same
`conflict` value, e.g. one reservation) never share a batch or run in two batches at once: the later one waits.
A batch that fails as a whole (the database, a bug; not a call's own domain error) is run again call by call, so
one bad call never fails the calls that came with it.

While calls keep arriving together (the last batch had two or more), a leader first waits up to `linger` seconds for
more to join, or until `max_batch` are queued: PostgreSQL's commit_delay, for whole calls. Bigger batches cost less
per call; a lone caller never waits. A call whose deadline passes while it waits is answered DeadlineExceeded and
never done: nobody is waiting for its work (a retry with its request id does it).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from typing import Generic, TypeVar

from google.protobuf.message import Message

from storeplane_runtime import deadlines
from storeplane_runtime.db import Database, UnitOfWork
from storeplane_runtime.errors import DeadlineExceeded, DomainError
from storeplane_runtime.idempotency import Call, check_request_id, fingerprint, run_batch
from storeplane_runtime.outbox import trace_headers
from storeplane_runtime.telemetry import BATCH_CALLS

__all__ = ["Batcher"]

P = TypeVar("P")
R = TypeVar("R", bound=Message)

Work = Callable[[UnitOfWork, Sequence[Call[P]]], Sequence[R | DomainError]]


class _Waiting(Generic[P, R]):
    __slots__ = ("call", "conflicts", "deadline", "done", "lead", "leading", "outcome", "wake")

    def __init__(self, call: Call[P], conflicts: tuple[Hashable, ...], deadline: float | None) -> None:
        self.call = call
        self.conflicts = conflicts
        self.deadline = deadline
        self.outcome: R | BaseException | None = None
        self.done = False
        self.lead = False  # told to lead by the leader before it (not yet seen)
        self.leading = False  # holds one of the lanes
        self.wake = threading.Event()


class Batcher(Generic[P, R]):
    """Calls of one mutating method done in shared transactions (see the module)."""

    def __init__(
        self,
        database: Database,
        *,
        source: str,
        method: str,
        response_type: type[R],
        work: Work[P, R],
        max_batch: int = 32,
        lanes: int = 1,
        linger: float = 0.0,
    ) -> None:
        if max_batch < 1 or lanes < 1 or linger < 0:
            raise ValueError("max_batch and lanes must be at least 1, linger not negative")
        self.database = database
        self.source = source
        self.method = method
        self.response_type = response_type
        self.work = work
        self.max_batch = max_batch
        self.lanes = lanes
        self.linger = linger
        self._lock = threading.Lock()
        self._full = threading.Condition(self._lock)  # notified when `max_batch` calls are queued
        self._last_size = 0  # calls in the batch taken last
        self._queue: deque[_Waiting[P, R]] = deque()
        self._busy: set[Hashable] = set()  # conflict values of the calls in running batches
        self._leaders = 0

    def call(self, *, caller: str, request: Message, request_id: str, payload: P, conflict: Hashable = None) -> R:
        """Do the call (once per caller and request_id) and return its answer; raises its domain error."""
        check_request_id(request_id)
        call = Call(caller, self.method, request_id, fingerprint(request), payload, trace_headers())
        me: _Waiting[P, R] = _Waiting(call, (("key", caller, request_id), ("conflict", conflict)), deadlines.current())
        with self._lock:
            self._queue.append(me)
            if len(self._queue) >= self.max_batch:
                self._full.notify_all()
            leading = me.leading = self._leaders < self.lanes
            if leading:
                self._leaders += 1
        while True:
            if leading:
                self._lead(me)
            with self._lock:  # every change of `done` and `lead` is made under the lock, then `wake` is set
                leading, me.lead = me.lead, False
                me.wake.clear()
                if me.done and not leading:
                    break
            if not leading:
                me.wake.wait()
        if isinstance(me.outcome, BaseException):
            raise me.outcome
        assert me.outcome is not None
        return me.outcome

    def _lead(self, me: _Waiting[P, R]) -> None:
        """Run batches until `me` is done or nothing can be taken; then give the lead on (or up)."""
        while True:
            with self._lock:
                self._gather()
                batch = self._take()
                self._last_size = len(batch)
                if not batch:  # nothing queued, or only calls conflicting with running ones (their leader goes on)
                    self._leaders -= 1
                    me.leading = False
                    return
            self._run(batch)
            if me.done:
                with self._lock:
                    me.leading = False
                    successor = next((w for w in self._queue if not w.leading), None)
                    if successor is None:
                        self._leaders -= 1
                    else:  # its lane passes on
                        successor.lead = successor.leading = True
                        successor.wake.set()
                return

    def _gather(self) -> None:
        """Under the lock: if the last batch had two calls or more, wait up to `linger` for `max_batch` queued."""
        if self.linger <= 0 or self._last_size < 2:
            return
        deadline = time.monotonic() + self.linger
        while len(self._queue) < self.max_batch:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._full.wait(remaining)

    def _take(self) -> list[_Waiting[P, R]]:
        """Up to `max_batch` queued calls in arrival order, none conflicting with another or a running call. A call
        whose deadline passed while it waited is answered DeadlineExceeded instead: nobody waits for its work."""
        batch: list[_Waiting[P, R]] = []
        taken: set[Hashable] = set()
        kept: deque[_Waiting[P, R]] = deque()
        now = time.monotonic()
        while self._queue and len(batch) < self.max_batch:
            waiting = self._queue.popleft()
            if waiting.deadline is not None and waiting.deadline <= now:
                waiting.outcome = DeadlineExceeded(
                    "the call's deadline passed while it waited its turn; nothing was done",
                    metadata={"request_id": waiting.call.request_id},
                )
                waiting.done = True
                waiting.wake.set()
                continue
            if any(c in self._busy or c in taken for c in waiting.conflicts):
                kept.append(waiting)
                continue
            taken.update(waiting.conflicts)
            batch.append(waiting)
        self._queue.extendleft(reversed(kept))
        self._busy |= taken
        return batch

    def _run(self, batch: list[_Waiting[P, R]]) -> None:
        outcomes: list[R | BaseException]
        try:
            outcomes = list(self._batch([w.call for w in batch]))
        except Exception as error:
            # The batch as a whole failed: each call alone, so that one call's trouble stays its own.
            outcomes = [error] if len(batch) == 1 else [self._alone(w.call) for w in batch]
        BATCH_CALLS.labels(self.method).observe(len(batch))
        with self._lock:
            for waiting, outcome in zip(batch, outcomes, strict=True):
                self._busy.difference_update(waiting.conflicts)
                waiting.outcome = outcome
                waiting.done = True
                waiting.wake.set()

    def _alone(self, call: Call[P]) -> R | BaseException:
        try:
            (outcome,) = self._batch([call])
        except Exception as error:
            return error
        return outcome

    def _batch(self, calls: Sequence[Call[P]]) -> list[R | DomainError]:
        return run_batch(
            self.database, source=self.source, calls=calls, response_type=self.response_type, work=self.work
        )
