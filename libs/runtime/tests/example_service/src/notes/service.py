"""A complete storeplane service in one module (a real one splits these parts as docs/conventions.md says):
one RPC that writes a row and its event in one unit of work, and one consumer of that event."""

from __future__ import annotations

from sqlalchemy import Boolean, Column, MetaData, String, Table, update
from storeplane.example.v1 import notes_pb2, notes_pb2_grpc

from storeplane_runtime.app import ServiceApp
from storeplane_runtime.db import Database, UnitOfWork
from storeplane_runtime.errors import Violations
from storeplane_runtime.event_ids import new_event_id
from storeplane_runtime.idempotency import IdempotentCalls
from storeplane_runtime.messaging import Consumers
from storeplane_runtime.server import ServiceRegistration
from storeplane_runtime.settings import ServiceSettings
from storeplane_runtime.stores import load_stores
from storeplane_runtime.tables import NAMING

NAME = "notes"
SERVICE = notes_pb2.DESCRIPTOR.services_by_name["NotesService"]

# storage: the table (created by migrations/versions/0001_notes.py)
notes = Table(
    "notes",
    MetaData(naming_convention=NAMING),
    Column("note_id", String(36), primary_key=True),
    Column("store_id", String(64), nullable=False),
    Column("text", String(500), nullable=False),
    Column("filed", Boolean, nullable=False, default=False),
)


class NotesServicer(notes_pb2_grpc.NotesServiceServicer):
    """The API: validate, one unit of work (row + event), answer. Domain errors become statuses by the kit."""

    def __init__(self, database: Database) -> None:
        self.stores = load_stores()
        self.calls = IdempotentCalls(database, SERVICE, source=NAME)

    def AddNote(self, request: notes_pb2.AddNoteRequest, context: object) -> notes_pb2.AddNoteResponse:
        v = Violations()
        v.store("store_id", request.store_id, self.stores)
        if not 1 <= len(request.text) <= 500:
            v.add("text", "1 to 500 characters")
        v.raise_if_any()

        def work(uow: UnitOfWork) -> notes_pb2.AddNoteResponse:
            note_id = new_event_id()
            uow.connection.execute(notes.insert().values(note_id=note_id, store_id=request.store_id, text=request.text))
            uow.publish(notes_pb2.NoteAdded(note_id=note_id), store_id=request.store_id)
            return notes_pb2.AddNoteResponse(note_id=note_id)

        return self.calls.once(context, request, notes_pb2.AddNoteResponse, work)  # type: ignore[arg-type]


def notes_consumers() -> Consumers:
    """The consumer: applies each NoteAdded once (the kit's inbox), in its own unit of work."""
    consumers = Consumers(NAME)

    @consumers.handler(notes_pb2.NoteAdded)
    def on_note_added(uow: UnitOfWork, event: notes_pb2.NoteAdded) -> None:
        uow.connection.execute(update(notes).where(notes.c.note_id == event.note_id).values(filed=True))

    return consumers


def create_app(settings: ServiceSettings) -> ServiceApp:
    """Wiring: the database first, then the servicer that needs it, the consumer and the outbox relay."""

    def registrations(database: Database) -> list[ServiceRegistration]:
        servicer = NotesServicer(database)
        return [ServiceRegistration(SERVICE.full_name, notes_pb2_grpc.add_NotesServiceServicer_to_server, servicer)]

    return ServiceApp.with_database(NAME, settings, registrations, package_file=__file__, consumers=notes_consumers())
