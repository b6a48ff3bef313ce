"""Customer profiles: what a registration or an update may say, how each field is checked and normalised, which
fields a field mask may name, what erasure leaves, and the events each change causes.

Nothing here echoes a submitted name, email or phone into a message or violation: those reach logs and clients."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from customer.domain.cards import card_key, card_number_problem
from customer.domain.contact import ContactProblem, normalise_email, normalise_phone
from customer.domain.stats import PurchaseStats
from storeplane_runtime.errors import AlreadyExists, FieldViolation, InvalidInput, NotFound, Violations

MAX_GIVEN_NAME_LENGTH = 100
MAX_FAMILY_NAME_LENGTH = 100

# The paths UpdateCustomer's mask may name (the contract's list), in the order CustomerUpdated names them.
UPDATABLE_PATHS = (
    "given_name",
    "family_name",
    "email",
    "phone",
    "loyalty_card_number",
    "marketing_email",
    "marketing_sms",
    "home_store_id",
)
OUTPUT_ONLY_PATHS = ("customer_id", "stats", "created_at", "updated_at", "erased", "erased_at")
_CONSENTS = ("marketing_email", "marketing_sms")


class CustomerNotFound(NotFound):
    """No customer has that id or key (or the one that had it was erased)."""

    reason = "CUSTOMER_NOT_FOUND"

    @classmethod
    def by(cls, kind: str, customer_id: str = "") -> CustomerNotFound:
        """Not found by `kind` ("id", "email"...): only an id is named back, never a personal key."""
        if customer_id:
            return cls(f"no customer {customer_id[:64]!r}", metadata={"customer_id": customer_id[:64]})
        return cls(f"no customer with that {kind}", metadata={"key": kind})


class KeyTaken(AlreadyExists):
    """Another customer has this email, phone or card number (or, for a card, had it: cards are never reused)."""

    key = ""

    def __init__(self, field_path: str) -> None:
        super().__init__(
            f"{self.key.replace('_', ' ')} is already taken",
            metadata={"field": field_path},
            violations=[FieldViolation(field_path, "already used by another customer")],
        )


class EmailTaken(KeyTaken):
    reason = "EMAIL_TAKEN"
    key = "email"


class PhoneTaken(KeyTaken):
    reason = "PHONE_TAKEN"
    key = "phone"


class CardTaken(KeyTaken):
    reason = "CARD_TAKEN"
    key = "loyalty_card_number"


_TAKEN: dict[str, type[KeyTaken]] = {"email": EmailTaken, "phone": PhoneTaken, "loyalty_card_number": CardTaken}


def taken_error(key: str) -> KeyTaken:
    """The error of `key` ("email", "phone" or "loyalty_card_number") being taken, naming the request's field."""
    return _TAKEN[key](f"customer.{key}")


@dataclass(frozen=True)
class Consent:
    """A marketing consent and when it was last given or withdrawn (None: never set)."""

    granted: bool = False
    updated_at: datetime | None = None

    def set_to(self, granted: bool, now: datetime) -> Consent:
        """Setting it again to what it is keeps its time: the time says when the customer changed their mind."""
        return self if granted == self.granted and self.updated_at is not None else Consent(granted, now)


@dataclass(frozen=True)
class ProfileDraft:
    """A profile as a request gives it, unchecked. A consent is None when the request leaves it unset."""

    given_name: str = ""
    family_name: str = ""
    email: str = ""
    phone: str = ""
    loyalty_card_number: str = ""
    marketing_email: bool | None = None
    marketing_sms: bool | None = None
    home_store_id: str = ""


@dataclass(frozen=True)
class Profile:
    """A customer's personal data, checked and normalised: email lower case, phone E.164, card digits only ("" for
    email and phone: none; "" for the card only until one is assigned)."""

    given_name: str
    family_name: str
    email: str
    phone: str
    loyalty_card_number: str
    marketing_email: Consent
    marketing_sms: Consent
    home_store_id: str

    def keys(self) -> dict[str, str]:
        """The unique keys it holds, by field (empty ones left out)."""
        found = {"email": self.email, "phone": self.phone, "loyalty_card_number": self.loyalty_card_number}
        return {k: v for k, v in found.items() if v}


@dataclass(frozen=True)
class Customer:
    """A customer; `profile` is None once erased (the tombstone keeps id, times and stats, nothing personal)."""

    customer_id: str
    profile: Profile | None
    created_at: datetime
    updated_at: datetime
    erased_at: datetime | None = None
    stats: PurchaseStats = field(default_factory=PurchaseStats)

    @property
    def erased(self) -> bool:
        return self.profile is None


# --- the events a change causes --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CustomerRegistered:
    customer_id: str
    loyalty_card_number: str
    home_store_id: str


@dataclass(frozen=True)
class CustomerUpdated:
    customer_id: str
    changed: tuple[str, ...]
    loyalty_card_number: str
    home_store_id: str


@dataclass(frozen=True)
class CustomerErased:
    customer_id: str
    loyalty_card_number: str


# --- checks ------------------------------------------------------------------------------------------------------


def _name(v: Violations, path: str, value: str, low: int, high: int) -> str:
    text = value.strip()
    if len(text) < low:
        v.add(path, "must not be empty")
    elif len(text) > high:
        v.add(path, f"at most {high} characters")
    elif not text.isprintable():  # refuses control and format characters and every whitespace but the space
        v.add(path, "must not contain control characters")
    return text


def _email(v: Violations, path: str, raw: str) -> str:
    if not raw.strip():
        return ""
    try:
        return normalise_email(raw)
    except ContactProblem as problem:
        v.add(path, str(problem))
        return ""


def _phone(v: Violations, path: str, raw: str, country: str | None) -> str:
    if not raw.strip():
        return ""
    try:
        return normalise_phone(raw, country)
    except ContactProblem as problem:
        v.add(path, str(problem))
        return ""


def _card(v: Violations, path: str, raw: str) -> str:
    if not raw.strip():
        return ""  # assigned by the service
    number = card_key(raw.strip())
    problem = card_number_problem(number)
    if problem:
        v.add(path, problem)
    return number


def _home_store(v: Violations, path: str, store_id: str, countries: Mapping[str, str | None]) -> None:
    v.store(path, store_id, countries)


def check_registration(draft: ProfileDraft, countries: Mapping[str, str | None], *, now: datetime) -> Profile:
    """The profile of a registration (card "" when the service is to assign one), or InvalidInput naming every bad
    field as `customer.<field>`. `countries`: the configured stores and the country each reads national phone
    numbers with (None: international formats only)."""
    v = Violations()
    if not (draft.email.strip() or draft.phone.strip() or draft.loyalty_card_number.strip()):
        v.add("customer", "give at least one of email, phone or loyalty_card_number")
    _home_store(v, "customer.home_store_id", draft.home_store_id, countries)
    profile = Profile(
        given_name=_name(v, "customer.given_name", draft.given_name, 1, MAX_GIVEN_NAME_LENGTH),
        family_name=_name(v, "customer.family_name", draft.family_name, 0, MAX_FAMILY_NAME_LENGTH),
        email=_email(v, "customer.email", draft.email),
        phone=_phone(v, "customer.phone", draft.phone, countries.get(draft.home_store_id)),
        loyalty_card_number=_card(v, "customer.loyalty_card_number", draft.loyalty_card_number),
        marketing_email=Consent() if draft.marketing_email is None else Consent(draft.marketing_email, now),
        marketing_sms=Consent() if draft.marketing_sms is None else Consent(draft.marketing_sms, now),
        home_store_id=draft.home_store_id,
    )
    v.raise_if_any()
    return profile


def check_mask(paths: Sequence[str]) -> tuple[str, ...]:
    """The fields an update mask names, each once, in the contract's order; InvalidInput naming every bad path as
    `update_mask.paths[i]` (unknown, output only, or none at all). `marketing_email.granted` means the consent."""
    v = Violations()
    named: set[str] = set()
    if not paths:
        v.add("update_mask", "name at least one field")
    for i, path in enumerate(paths):
        where = f"update_mask.paths[{i}]"
        top = path.split(".", 1)[0]
        if path in UPDATABLE_PATHS:
            named.add(path)
        elif top in _CONSENTS and path == f"{top}.granted":
            named.add(top)
        elif top in OUTPUT_ONLY_PATHS or (top in _CONSENTS and path == f"{top}.updated_at"):
            v.add(where, "output only: cannot be changed")
        else:
            v.add(where, "unknown field")
    v.raise_if_any()
    return tuple(p for p in UPDATABLE_PATHS if p in named)


def check_update(
    current: Profile,
    draft: ProfileDraft,
    paths: Iterable[str],
    countries: Mapping[str, str | None],
    *,
    now: datetime,
) -> Profile:
    """`current` with the fields of `paths` (as `check_mask` gave them) set from `draft`, checked as at registration;
    a national phone number is read with the country of the home store the update leaves. An empty card number asks
    for a new one (a lost card replaced): the card is then "" for the service to assign."""
    paths = set(paths)
    v = Violations()
    changes: dict[str, object] = {}
    home = draft.home_store_id if "home_store_id" in paths else current.home_store_id
    if "home_store_id" in paths:
        _home_store(v, "customer.home_store_id", draft.home_store_id, countries)
        changes["home_store_id"] = draft.home_store_id
    if "given_name" in paths:
        changes["given_name"] = _name(v, "customer.given_name", draft.given_name, 1, MAX_GIVEN_NAME_LENGTH)
    if "family_name" in paths:
        changes["family_name"] = _name(v, "customer.family_name", draft.family_name, 0, MAX_FAMILY_NAME_LENGTH)
    if "email" in paths:
        changes["email"] = _email(v, "customer.email", draft.email)
    if "phone" in paths:
        changes["phone"] = _phone(v, "customer.phone", draft.phone, countries.get(home))
    if "loyalty_card_number" in paths:
        changes["loyalty_card_number"] = _card(v, "customer.loyalty_card_number", draft.loyalty_card_number)
    if "marketing_email" in paths:
        changes["marketing_email"] = current.marketing_email.set_to(bool(draft.marketing_email), now)
    if "marketing_sms" in paths:
        changes["marketing_sms"] = current.marketing_sms.set_to(bool(draft.marketing_sms), now)
    v.raise_if_any()
    return replace(current, **changes)  # type: ignore[arg-type]


def changed_fields(before: Profile, after: Profile) -> tuple[str, ...]:
    """The fields whose value differs, in the contract's order (a consent set again to the same value is none)."""
    return tuple(p for p in UPDATABLE_PATHS if getattr(before, p) != getattr(after, p))


# --- changes -----------------------------------------------------------------------------------------------------


def register(customer_id: str, profile: Profile, *, now: datetime) -> tuple[Customer, CustomerRegistered]:
    """A new customer from a checked profile with its card assigned, and its event."""
    assert profile.loyalty_card_number, "a registered customer has a card"
    customer = Customer(customer_id, profile, created_at=now, updated_at=now)
    return customer, CustomerRegistered(customer_id, profile.loyalty_card_number, profile.home_store_id)


def update(customer: Customer, profile: Profile, *, now: datetime) -> tuple[Customer, CustomerUpdated | None]:
    """The customer with its new profile, and the event naming what changed (None, and nothing changed, when the
    update set every field to what it was)."""
    if customer.profile is None:
        raise CustomerNotFound.by("id", customer.customer_id)
    changed = changed_fields(customer.profile, profile)
    if not changed:
        return customer, None
    after = replace(customer, profile=profile, updated_at=now)
    return after, CustomerUpdated(customer.customer_id, changed, profile.loyalty_card_number, profile.home_store_id)


def erased(customer: Customer, *, now: datetime) -> tuple[Customer, CustomerErased | None]:
    """The tombstone (no profile; id, times and stats kept) and its event; erasing a tombstone changes nothing."""
    if customer.profile is None:
        return customer, None
    tombstone = replace(customer, profile=None, erased_at=now, updated_at=now)
    return tombstone, CustomerErased(customer.customer_id, customer.profile.loyalty_card_number)


def invalid(field_path: str, description: str) -> InvalidInput:
    """One bad field, as a domain error."""
    return InvalidInput("the request is invalid", violations=[FieldViolation(field_path, description)])
