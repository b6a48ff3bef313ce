"""Loyalty card numbers: a fixed number of digits whose last one is a Luhn check digit, so a mistyped or misread
number (one wrong digit, two neighbours swapped) is refused at the till instead of finding someone else."""

from __future__ import annotations

import secrets

CARD_NUMBER_LENGTH = 13


def luhn_check_digit(body: str) -> str:
    """The Luhn digit that makes `body + digit` valid."""
    total = 0
    for i, char in enumerate(reversed(body)):
        digit = int(char)
        if i % 2 == 0:  # doubled: the rightmost digit of the body sits left of the check digit
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return str((10 - total % 10) % 10)


def luhn_valid(number: str) -> bool:
    return len(number) > 1 and number.isascii() and number.isdigit() and luhn_check_digit(number[:-1]) == number[-1]


def card_number_problem(number: str) -> str | None:
    """What is wrong with a card number (already stripped of spaces and dashes); None when nothing is."""
    if not number:
        return "must not be empty"
    if len(number) != CARD_NUMBER_LENGTH or not number.isascii() or not number.isdigit():
        return f"must be {CARD_NUMBER_LENGTH} digits"
    if not luhn_valid(number):
        return "check digit does not match (Luhn)"
    return None


def card_key(raw: str) -> str:
    """A card number as typed or scanned, without the spaces and dashes printed cards group digits with."""
    return raw.replace(" ", "").replace("-", "")


def new_card_number(prefix: str) -> str:
    """A random number of CARD_NUMBER_LENGTH digits starting with `prefix`, with its check digit. Random rather than
    counted: a card number tells nobody how many customers there are or when one registered. Storage makes sure a
    number is never issued twice."""
    free = CARD_NUMBER_LENGTH - 1 - len(prefix)
    assert free >= 6, "the card prefix leaves too few random digits"
    body = prefix + str(secrets.randbelow(10**free)).zfill(free)
    return body + luhn_check_digit(body)
