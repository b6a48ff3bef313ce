"""Email addresses and phone numbers as stored and looked up: one normal form each, so that every way of writing the
same address or number finds the same customer and a unique index can refuse a second one.

Problems are described without echoing the value: the description reaches logs and clients (no PII there)."""

from __future__ import annotations

import phonenumbers
from email_validator import EmailNotValidError, validate_email

MAX_EMAIL_LENGTH = 254  # RFC 5321's path limit less the brackets
MAX_PHONE_INPUT_LENGTH = 40  # "+49 (0) 151 / 2345 - 6789" and friends; longer is not a phone number


class ContactProblem(ValueError):
    """An email or phone that cannot be stored; the message says why without repeating it."""


def normalise_email(raw: str) -> str:
    """The address in lower case after syntax checks and Unicode normalisation (`email-validator`, no DNS lookups)."""
    text = raw.strip()
    if not text:
        raise ContactProblem("must not be empty")
    if len(text) > MAX_EMAIL_LENGTH:
        raise ContactProblem(f"at most {MAX_EMAIL_LENGTH} characters")
    try:
        checked = validate_email(text, check_deliverability=False)
    except EmailNotValidError:
        raise ContactProblem("not a valid email address") from None  # its message quotes the address
    return checked.normalized.lower()


def normalise_phone(raw: str, region: str | None) -> str:
    """The number in E.164 (`+4915123456789`). International formats (`+49 …`, `0049 …`) are read everywhere; a
    national one (`0151 …`) only with the `region` (ISO 3166 country) it is national to."""
    text = raw.strip()
    if not text:
        raise ContactProblem("must not be empty")
    if len(text) > MAX_PHONE_INPUT_LENGTH:
        raise ContactProblem(f"at most {MAX_PHONE_INPUT_LENGTH} characters")
    if text.startswith("00"):
        # The international call prefix of most of the world (ITU's recommendation), read as such in every country:
        # no national number starts with it, and a customer of a US or Japanese store may well write it.
        text = "+" + text[2:]
    if region is None and not text.startswith("+"):
        raise ContactProblem("give the number in international format (+country code)")
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        raise ContactProblem("not a phone number") from None
    if not phonenumbers.is_valid_number(number):
        raise ContactProblem("not a valid phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
