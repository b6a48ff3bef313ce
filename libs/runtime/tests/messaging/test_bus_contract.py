"""The behaviours the embedded bus and RabbitMQ must share, run on both (`bus` = "rabbitmq" | "inprocess").

Each case goes the whole way: a producer's unit of work writes its outbox, the relay publishes, the consumer applies
the event with its inbox row in its own database (PostgreSQL + a fresh vhost on RabbitMQ, SQLite in process).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from messaging_kit import FAST, Pipeline, mark_unsent, metric, sale, unsent_rows
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from pos.checkout.v1 import events_pb2 as checkout_events
from storeplane_runtime.db import UnitOfWork
from storeplane_runtime.testing import wait_until

SALE = checkout_events.SaleCompleted.DESCRIPTOR.full_name
# Handler attempts a poison event gets: the first plus one per retry delay (0.3 s, 0.6 s in FAST).
ATTEMPTS = FAST.max_attempts


@pytest.fixture(
    params=[
        pytest.param("rabbitmq", marks=[pytest.mark.rabbitmq, pytest.mark.postgres]),
        pytest.param("inprocess"),
    ]
)
def bus(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def pipeline(bus: str, make_pipeline: Callable[..., Pipeline]) -> Pipeline:
    return make_pipeline(bus)


def test_every_committed_event_is_applied_exactly_once_even_when_published_again(pipeline: Pipeline) -> None:
    ids: list[str] = []
    for commit in range(6):
        ids += pipeline.publish(*[f"S{commit}-{n}" for n in range(50)])
    with UnitOfWork(pipeline.producer.database, source="checkout") as uow:
        uow.publish(sale("ROLLED-BACK"))
        uow.rollback()
    wait_until(lambda: pipeline.consumer_db.effects()[1] == 300, 30, "every committed event applied")
    wait_until(lambda: unsent_rows(pipeline.producer) == 0, 10, "outbox marked sent")
    assert pipeline.consumer_db.effects() == (300, 300)

    # The relay publishes everything again (as after a crash between publishing and marking sent):
    # every copy is delivered and absorbed by the inbox.
    assert mark_unsent(pipeline.producer) == 300
    wait_until(lambda: pipeline.duplicates() == 300, 30, "the 300 copies delivered and acknowledged")
    # The relay marks a row sent once its copy was settled: just after the consumer counted it, not before.
    wait_until(lambda: unsent_rows(pipeline.producer) == 0, 10, "the copies marked sent again")
    assert pipeline.consumer_db.effects() == (300, 300)
    assert len(pipeline.rec.seen) == 300  # a duplicate never reaches the handler
    assert "ROLLED-BACK" not in pipeline.rec.seen
    assert pipeline.parked() == []
    assert len(ids) == len(set(ids)) == 300


def test_a_failing_handler_is_retried_later_and_succeeds_without_holding_back_the_others(pipeline: Pipeline) -> None:
    pipeline.rec.flaky["F"] = ATTEMPTS - 1  # fails on every attempt but the last one
    pipeline.publish("F", *[f"G{n}" for n in range(50)])
    wait_until(lambda: pipeline.consumer_db.effects()[1] == 51, 20, "the flaky event applied at last")
    assert pipeline.consumer_db.effects() == (51, 51)
    assert pipeline.rec.seen.count("F") == ATTEMPTS
    # Every good event was applied before the flaky one succeeded (it waited in a retry, not in front of them).
    last_f = len(pipeline.rec.seen) - 1 - pipeline.rec.seen[::-1].index("F")
    assert all(pipeline.rec.seen.index(f"G{n}") < last_f for n in range(50))
    assert pipeline.parked() == []
    assert metric("storeplane_events_retried_total", consumer=pipeline.name, event_type=SALE) == ATTEMPTS - 1


def test_a_poison_event_is_parked_with_its_reason_while_the_good_events_behind_it_flow(pipeline: Pipeline) -> None:
    pipeline.rec.poison.add("P")
    [poison_id] = pipeline.publish("P")
    pipeline.publish(*[f"G{n}" for n in range(100)])
    wait_until(lambda: pipeline.consumer_db.effects()[1] == 100, 20, "the good events behind the poison")
    wait_until(lambda: len(pipeline.parked()) == 1, 20, "the poison parked")
    [parked] = pipeline.parked()
    assert parked.event_id == poison_id
    assert "ValueError: cannot apply sale P" in parked.reason
    assert parked.attempts == ATTEMPTS
    assert pipeline.rec.seen.count("P") == ATTEMPTS
    assert pipeline.consumer_db.effects() == (100, 100)
    assert unsent_rows(pipeline.producer) == 0  # parked counts as settled: the relay is not stuck on it


def test_replaying_a_parked_event_applies_it_once(pipeline: Pipeline) -> None:
    pipeline.rec.poison.add("P")
    poison_id, _good_id = pipeline.publish("P", "G")
    wait_until(lambda: len(pipeline.parked()) == 1, 20, "the poison parked")
    assert pipeline.consumer_db.effects() == (1, 1)

    pipeline.rec.poison.clear()  # the cause is fixed
    assert pipeline.replay() == 1
    wait_until(lambda: pipeline.consumer_db.effects()[1] == 2, 20, "the replayed event applied")
    assert pipeline.parked() == []
    assert pipeline.rec.seen.count("P") == ATTEMPTS + 1
    # Replaying again (nothing parked) and publishing the original once more have no further effect.
    assert pipeline.replay() == 0
    mark_unsent(pipeline.producer, [poison_id])
    wait_until(lambda: pipeline.duplicates() >= 1, 20, "the copy acknowledged as a duplicate")
    assert pipeline.consumer_db.effects() == (2, 2)


def test_the_trace_of_the_publishing_span_reaches_the_handler(pipeline: Pipeline) -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("CompleteSale") as span:
        trace_id = f"{span.get_span_context().trace_id:032x}"
        pipeline.publish("S-traced")
    pipeline.publish("S-untraced")
    wait_until(lambda: pipeline.consumer_db.effects()[1] == 2, 20, "delivery")
    traced = pipeline.rec.traceparents[pipeline.rec.seen.index("S-traced")]
    untraced = pipeline.rec.traceparents[pipeline.rec.seen.index("S-untraced")]
    assert traced == trace_id
    assert untraced != trace_id  # no context leaks from one event to the next
    assert trace.get_current_span() is trace.INVALID_SPAN
