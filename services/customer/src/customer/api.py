"""The CustomerService servicer: checks requests, calls the use cases and queries, answers with the messages of
messages.py. Domain errors become statuses through ERROR_TABLE (in the server's interceptor).

Customers belong to no store: a customer shops everywhere, so the scopes each RPC declares are the whole rule (the
kit checks RegisterCustomer's home store from its option); there is no ownership check by id."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import grpc

from customer import messages, storage, use_cases
from customer.domain import (
    CardTaken,
    ContactProblem,
    CustomerNotFound,
    EmailTaken,
    PhoneTaken,
    Profile,
    ProfileDraft,
    card_key,
    card_number_problem,
    check_mask,
    check_registration,
    normalise_email,
    normalise_phone,
)
from customer.queries import CustomerQueries
from customer.settings import CustomerSettings
from pos.customer.v1 import customer_pb2, customer_pb2_grpc
from storeplane_runtime.batching import Batcher
from storeplane_runtime.clock import utcnow
from storeplane_runtime.db import Database, UnitOfWork
from storeplane_runtime.errors import DomainError, InvalidInput, Violations
from storeplane_runtime.idempotency import Call, IdempotentCalls
from storeplane_runtime.identity import caller_of
from storeplane_runtime.status import BASE_ERROR_TABLE
from storeplane_runtime.timestamps import from_timestamp

NAME = "customer"
SERVICE_DESCRIPTOR = customer_pb2.DESCRIPTOR.services_by_name["CustomerService"]
MAX_CUSTOMER_ID_LENGTH = 64

# Most specific class wins; every customer error is listed so the mapping can be read in one place.
ERROR_TABLE: dict[type[BaseException], grpc.StatusCode] = {
    **BASE_ERROR_TABLE,
    CustomerNotFound: grpc.StatusCode.NOT_FOUND,
    EmailTaken: grpc.StatusCode.ALREADY_EXISTS,
    PhoneTaken: grpc.StatusCode.ALREADY_EXISTS,
    CardTaken: grpc.StatusCode.ALREADY_EXISTS,
}


@dataclass(frozen=True)
class Registration:
    """A checked registration waiting for its turn in a batch, with the time it arrived (its consents' time)."""

    profile: Profile
    received_at: datetime


def draft_of(customer: customer_pb2.Customer) -> ProfileDraft:
    """The profile a request's customer gives (output-only fields ignored; a consent None when left unset)."""
    return ProfileDraft(
        given_name=customer.given_name,
        family_name=customer.family_name,
        email=customer.email,
        phone=customer.phone,
        loyalty_card_number=customer.loyalty_card_number,
        marketing_email=customer.marketing_email.granted if customer.HasField("marketing_email") else None,
        marketing_sms=customer.marketing_sms.granted if customer.HasField("marketing_sms") else None,
        home_store_id=customer.home_store_id,
    )


class CustomerServicer(customer_pb2_grpc.CustomerServiceServicer):
    """pos.customer.v1.CustomerService."""

    def __init__(
        self,
        database: Database,
        settings: CustomerSettings,
        countries: Mapping[str, str | None],
        queries: CustomerQueries,
    ) -> None:
        self.database = database
        self.settings = settings
        self.countries = countries
        self.queries = queries
        self.calls = IdempotentCalls(database, SERVICE_DESCRIPTOR, source=NAME)
        # Registrations share transactions (group commit): a sign-up drive at the tills, a CRM back-fill.
        self._registrations: Batcher[Registration, customer_pb2.RegisterCustomerResponse] = Batcher(
            database,
            source=NAME,
            method=self.calls.method_of(customer_pb2.RegisterCustomerResponse),
            response_type=customer_pb2.RegisterCustomerResponse,
            work=self._register_batch,
            max_batch=settings.register_batch_size,
            lanes=settings.register_batch_lanes,
            linger=settings.register_batch_linger_seconds,
        )

    # --- reads ----------------------------------------------------------------------------------------------

    def GetCustomer(
        self, request: customer_pb2.GetCustomerRequest, context: grpc.ServicerContext
    ) -> customer_pb2.GetCustomerResponse:
        v = Violations()
        v.text("customer_id", request.customer_id, MAX_CUSTOMER_ID_LENGTH)
        v.raise_if_any()
        return customer_pb2.GetCustomerResponse(
            customer=messages.customer_message(self.queries.get(request.customer_id))
        )

    def FindCustomer(
        self, request: customer_pb2.FindCustomerRequest, context: grpc.ServicerContext
    ) -> customer_pb2.FindCustomerResponse:
        kind = request.WhichOneof("lookup")
        v = Violations()
        key = ""
        if kind is None:
            v.add("lookup", "give customer_id, loyalty_card_number, email or phone")
        elif kind == "customer_id":
            v.text("customer_id", request.customer_id, MAX_CUSTOMER_ID_LENGTH)
            key, kind = request.customer_id, "id"
        elif kind == "loyalty_card_number":
            key = card_key(request.loyalty_card_number.strip())
            problem = card_number_problem(key)
            if problem:
                v.add("loyalty_card_number", problem)
        else:
            try:  # no store to read a national format with: international formats only
                key = normalise_email(request.email) if kind == "email" else normalise_phone(request.phone, None)
            except ContactProblem as problem:
                v.add(kind, str(problem))
        v.raise_if_any()
        assert kind is not None
        return customer_pb2.FindCustomerResponse(customer=messages.customer_message(self.queries.find(kind, key)))

    def ExportCustomers(
        self, request: customer_pb2.ExportCustomersRequest, context: grpc.ServicerContext
    ) -> Iterator[customer_pb2.ExportCustomersResponse]:
        since = from_timestamp(request.updated_since) if request.HasField("updated_since") else None
        for customer in self.queries.export(
            since=since, include_erased=request.include_erased, go_on=context.is_active
        ):
            yield customer_pb2.ExportCustomersResponse(customer=messages.customer_message(customer))

    # --- writes ---------------------------------------------------------------------------------------------

    def RegisterCustomer(
        self, request: customer_pb2.RegisterCustomerRequest, context: grpc.ServicerContext
    ) -> customer_pb2.RegisterCustomerResponse:
        now = utcnow()
        profile = check_registration(draft_of(request.customer), self.countries, now=now)
        return self._registrations.call(
            caller=caller_of(context),
            request=request,
            request_id=request.request_id,
            payload=Registration(profile, now),
        )

    def _register_batch(
        self, uow: UnitOfWork, calls: Sequence[Call[Registration]]
    ) -> list[customer_pb2.RegisterCustomerResponse | DomainError]:
        """Registrations in one transaction, each as if alone: a later one sees the keys the earlier ones took. A
        key taken by a concurrent transaction (the unique index refused it) spoils the transaction on PostgreSQL:
        then the batch fails as a whole and the batcher runs each call alone."""
        outcomes: list[customer_pb2.RegisterCustomerResponse | DomainError] = []
        for call in calls:
            if call.trace_headers is not None:
                uow.trace_headers = call.trace_headers
            try:
                registered = use_cases.register_customer(
                    uow,
                    call.payload.profile,
                    card_prefix=self.settings.card_prefix,
                    now=call.payload.received_at,
                    request=(call.caller, call.request_id),
                )
            except DomainError as error:
                if storage.transaction_failed(uow.connection):
                    raise
                outcomes.append(error)
                continue
            outcomes.append(customer_pb2.RegisterCustomerResponse(customer=messages.customer_message(registered)))
        return outcomes

    def UpdateCustomer(
        self, request: customer_pb2.UpdateCustomerRequest, context: grpc.ServicerContext
    ) -> customer_pb2.UpdateCustomerResponse:
        v = Violations()
        v.text("customer.customer_id", request.customer.customer_id, MAX_CUSTOMER_ID_LENGTH)
        paths: tuple[str, ...] = ()
        try:
            paths = check_mask(list(request.update_mask.paths))
        except InvalidInput as bad:
            v.extend(bad.violations)
        v.raise_if_any()
        draft = draft_of(request.customer)
        caller = caller_of(context)

        def work(uow: UnitOfWork) -> customer_pb2.UpdateCustomerResponse:
            updated = use_cases.update_customer(
                uow,
                request.customer.customer_id,
                draft,
                paths,
                self.countries,
                card_prefix=self.settings.card_prefix,
                now=utcnow(),
                request=(caller, request.request_id),
            )
            return customer_pb2.UpdateCustomerResponse(customer=messages.customer_message(updated))

        return self.calls.once(context, request, customer_pb2.UpdateCustomerResponse, work)

    def EraseCustomer(
        self, request: customer_pb2.EraseCustomerRequest, context: grpc.ServicerContext
    ) -> customer_pb2.EraseCustomerResponse:
        v = Violations()
        v.text("customer_id", request.customer_id, MAX_CUSTOMER_ID_LENGTH)
        v.raise_if_any()

        def work(uow: UnitOfWork) -> customer_pb2.EraseCustomerResponse:
            tombstone = use_cases.erase_customer(
                uow,
                request.customer_id,
                now=utcnow(),
                # Register's, Update's and Erase's answers are all `Customer customer = 1`: one encoding fits each.
                answer=lambda c: customer_pb2.EraseCustomerResponse(
                    customer=messages.customer_message(c)
                ).SerializeToString(deterministic=True),
            )
            return customer_pb2.EraseCustomerResponse(customer=messages.customer_message(tombstone))

        return self.calls.once(context, request, customer_pb2.EraseCustomerResponse, work)
