"""The kit's minimal complete service (example_service/, shown in libs/runtime/README.md) works end to end on
SQLite and PostgreSQL, and the kit's test helpers drive it: start on a free port, deliver, read what it published."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_tools import protoc
from sqlalchemy import select

from storeplane_runtime.settings import ServiceSettings
from storeplane_runtime.status import details_of
from storeplane_runtime.testing import (
    RunningService,
    deliver,
    published,
    service_settings,
    start_service,
    test_authority,
    wait_until,
)

HERE = Path(__file__).parent
EXAMPLE = HERE / "example_service"
ROOT = HERE.parents[2]


@pytest.fixture(scope="module")
def notes_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """The example's protobuf code, generated for this run, and its service module."""
    out = tmp_path_factory.mktemp("example_protos")
    include = Path(protoc.__file__).parent / "_proto"
    (out / "storeplane/example/v1").mkdir(parents=True)
    status = protoc.main(
        [
            "protoc",
            f"-I{EXAMPLE}",
            f"-I{ROOT / 'protos'}",
            f"-I{include}",
            f"--python_out={out}/storeplane/example/v1",
            f"--grpc_python_out={out}/storeplane/example/v1",
            str(EXAMPLE / "notes.proto"),
        ]
    )
    assert status == 0
    # protoc writes `import notes_pb2` for a file at the include root: make it the package import.
    grpc_file = out / "storeplane/example/v1/notes_pb2_grpc.py"
    grpc_file.write_text(
        grpc_file.read_text().replace("import notes_pb2", "from storeplane.example.v1 import notes_pb2")
    )
    sys.path[:0] = [str(out), str(EXAMPLE / "src")]
    from notes import service

    yield service
    for path in (str(out), str(EXAMPLE / "src")):
        sys.path.remove(path)


@pytest.fixture
def notes(notes_module: object, database_url: str) -> Iterator[RunningService]:
    service = notes_module
    settings = service_settings(ServiceSettings, "notes", database_url, grpc_workers=8)
    token = test_authority().token(subject="till-1", scopes=["notes.write"], stores=["berlin-mitte"])
    running = start_service(service.create_app, settings, token=token)  # type: ignore[attr-defined]
    yield running
    running.stop()


def _add(notes: RunningService, text: str, request_id: str, store_id: str = "berlin-mitte") -> str:
    from storeplane.example.v1 import notes_pb2, notes_pb2_grpc

    stub = notes.stub_of(notes_pb2_grpc.NotesServiceStub)
    return stub.AddNote(notes_pb2.AddNoteRequest(request_id=request_id, store_id=store_id, text=text)).note_id


def _filed(notes: RunningService, note_id: str) -> bool:
    from notes.service import notes as table

    with notes.database.engine.connect() as conn:
        return bool(conn.execute(select(table.c.filed).where(table.c.note_id == note_id)).scalar_one())


def test_a_note_is_stored_published_and_consumed_once(notes: RunningService) -> None:
    from storeplane.example.v1 import notes_pb2

    note_id = _add(notes, "shelf 4 is wobbly", "r-1")
    assert _add(notes, "shelf 4 is wobbly", "r-1") == note_id  # a retry gets the first answer
    [event] = published(notes.database, notes_pb2.NoteAdded)
    assert event.note_id == note_id
    assert event.meta.source == "/storeplane/notes"
    assert event.meta.store_id == "berlin-mitte"
    wait_until(lambda: _filed(notes, note_id), 10, "the consumer filing the note")
    assert deliver(notes.app, event, event_id=event.meta.event_id) == "duplicate"  # the inbox saw it already


def test_bad_input_names_every_field_and_writes_nothing(notes: RunningService) -> None:
    from storeplane.example.v1 import notes_pb2

    with pytest.raises(grpc.RpcError) as raised:
        _add(notes, "", "r-2", store_id="")
    details = details_of(raised.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert {v.field for v in details.violations} == {"store_id", "text"}
    assert published(notes.database, notes_pb2.NoteAdded) == []


def test_its_declared_scope_and_store_are_enforced(notes: RunningService) -> None:
    from storeplane.example.v1 import notes_pb2, notes_pb2_grpc

    request = notes_pb2.AddNoteRequest(request_id="r-9", store_id="zurich-bahnhofstrasse", text="hello")
    with pytest.raises(grpc.RpcError) as raised:
        notes.stub_of(notes_pb2_grpc.NotesServiceStub).AddNote(request)
    assert details_of(raised.value).reason == "STORE_NOT_ALLOWED"
    with grpc.insecure_channel(f"127.0.0.1:{notes.port}") as anonymous, pytest.raises(grpc.RpcError) as raised:
        notes_pb2_grpc.NotesServiceStub(anonymous).AddNote(request)
    assert details_of(raised.value).code == grpc.StatusCode.UNAUTHENTICATED


def test_deliver_hands_an_event_to_the_consumers_once(notes: RunningService) -> None:
    from storeplane.example.v1 import notes_pb2

    note_id = _add(notes, "till 2 prints faintly", "r-3")
    event = notes_pb2.NoteAdded(note_id=note_id)
    assert deliver(notes.app, event, event_id="evt-1") == "applied"
    assert deliver(notes.app, event, event_id="evt-1") == "duplicate"
    assert _filed(notes, note_id)


def test_the_readme_shows_the_example_as_it_is() -> None:
    readme = (ROOT / "libs/runtime/README.md").read_text()
    shown = re.findall(r"```python\n(.*?)```", readme, re.S)
    source = (EXAMPLE / "src/notes/service.py").read_text()
    assert source in shown, "libs/runtime/README.md must show example_service/src/notes/service.py verbatim"


def test_its_migration_goes_up_and_back_down(notes_module: object, sqlite_url: str) -> None:
    from alembic import command
    from sqlalchemy import inspect

    from storeplane_runtime import migrations
    from storeplane_runtime.db import Database

    db = Database(sqlite_url)
    try:
        migrations.upgrade(db.engine, EXAMPLE / "migrations")
        assert {"notes", "outbox", "inbox", "held_events"} <= set(inspect(db.engine).get_table_names())
        command.downgrade(migrations.config_for(EXAMPLE / "migrations", db.engine), "base")
        assert set(inspect(db.engine).get_table_names()) <= {"alembic_version"}
    finally:
        db.dispose()
