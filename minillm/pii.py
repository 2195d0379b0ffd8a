"""Privacy redaction: find personal data and secrets in text and replace them with typed placeholders.

Chapter 01 (data) teaches this module; :mod:`minillm.curation` runs it as a
pipeline step. A model memorizes rare strings it sees in training, so e-mail
addresses, phone numbers, card numbers and leaked keys must not reach it.

Each kind of item is a regular expression that proposes candidates plus, where
a pattern alone would be too eager, a validator that accepts or rejects them:

==============  =================  ==========================================
placeholder     kind               validated by
==============  =================  ==========================================
``<EMAIL>``     e-mail address     pattern
``<PRIVATE_KEY>`` PEM private key  BEGIN/END armour
``<SECRET>``    API keys, tokens   known key formats; ``password = value`` with digits
``<IBAN>``      bank account       ISO 13616 mod-97 checksum
``<CREDIT_CARD>`` payment card     Luhn checksum and issuer prefix (2-6)
``<IP_ADDRESS>`` IPv4 / IPv6       ``ipaddress`` module
``<PHONE>``     phone number       international ``+``/``00`` form, or a
                                   national layout (US, UK, FR, DE, ...)
==============  =================  ==========================================

Ordinary numbers, dates (``2024-01-15``), times, versions (``3.11.2``) and
prices (``$1,299.99``) do not match any validated layout and stay untouched.
Kinds are tried in the order above; a later match overlapping an earlier one
is dropped.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Callable

import regex

from minillm.errors import DataError

PLACEHOLDERS = {
    "email": "<EMAIL>",
    "private_key": "<PRIVATE_KEY>",
    "secret": "<SECRET>",
    "iban": "<IBAN>",
    "credit_card": "<CREDIT_CARD>",
    "ip_address": "<IP_ADDRESS>",
    "phone": "<PHONE>",
}
"""Placeholder text for each kind of item :func:`find_pii` reports."""


@dataclass(frozen=True)
class PIIMatch:
    """One item found in a text: its ``kind`` (a key of :data:`PLACEHOLDERS`) and span."""

    kind: str
    start: int
    end: int
    text: str


def luhn_valid(number: str) -> bool:
    """Whether a digit string passes the Luhn checksum used by payment cards."""
    if not number.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_valid(candidate: str) -> bool:
    """Whether a string (spaces allowed) is an IBAN with a correct ISO 13616 mod-97 checksum."""
    s = candidate.replace(" ", "").upper()
    if not (15 <= len(s) <= 34 and s[:2].isalpha() and s[2:4].isdigit() and s.isalnum()):
        return False
    rearranged = s[4:] + s[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _card_ok(m: str) -> bool:
    digits = regex.sub(r"[ -]", "", m)
    return 13 <= len(digits) <= 19 and digits[0] in "23456" and luhn_valid(digits)


def _ip_ok(m: str) -> bool:
    try:
        addr = ipaddress.ip_address(m)
    except ValueError:
        return False
    # "1::2" or "::" also parse as IPv6 (slices in code); ask for three groups or more
    return addr.version == 4 or sum(1 for g in m.split(":") if g) >= 3


def _phone_ok(m: str) -> bool:
    digits = regex.sub(r"\D", "", m)
    if m.startswith(("+", "00")):
        return 8 <= len(digits) <= 15
    return 10 <= len(digits) <= 11


_SEP = r"[ .\-]"
_PATTERNS: list[tuple[str, regex.Pattern, Callable[[str], bool] | None]] = [
    ("email", regex.compile(r"(?<![\w.+-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"), None),
    ("private_key", regex.compile(
        r"-----BEGIN (?:[A-Z]+ )*PRIVATE KEY-----.*?-----END (?:[A-Z]+ )*PRIVATE KEY-----", regex.S), None),
    ("secret", regex.compile(
        r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"                       # AWS access key id
        r"|\bgh[pousr]_[A-Za-z0-9]{36,}\b|\bgithub_pat_\w{22,}"  # GitHub tokens
        r"|\bxox[abprs]-[A-Za-z0-9-]{10,}"                       # Slack
        r"|\bsk-(?:proj-)?[A-Za-z0-9_-]{20,}"                    # OpenAI-style
        r"|\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}"       # Stripe
        r"|\bAIza[0-9A-Za-z_-]{35}"                              # Google API key
        r"|\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"  # JWT
        r"|(?i:(?<=\b(?:api[_-]?key|secret(?:[_-]?key)?|access[_-]?token|auth[_-]?token|password|passwd)"
        r"[\"']?\s*[:=]\s*[\"']?))(?=[\w/+.\-]*\d)(?=[\w/+.\-]*[A-Za-z])[A-Za-z0-9/+_.\-]{12,}"
        r"(?![\w(])"),  # key = "value": the value only, with a digit and a letter, not a call
     None),
    ("iban", regex.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b"), iban_valid),
    ("credit_card", regex.compile(r"(?<![\d.,])\d(?:[ -]?\d){12,18}(?![\d.,]\d)"), _card_ok),
    ("ip_address", regex.compile(
        r"(?<![\w.:])(?:\d{1,3}\.){3}\d{1,3}(?![\w.]*\d)"
        r"|(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])"), _ip_ok),
    ("phone", regex.compile(
        rf"(?<![\w+])(?:\+|00)\d{{1,3}}(?:{_SEP}?(?:\(\d{{1,4}}\)|\d{{1,4}})){{2,5}}(?!\w)"   # +44 20 7946 0958
        rf"|(?<!\w)\(\d{{3}}\) ?\d{{3}}{_SEP}\d{{4}}(?!\w)"                       # (555) 123-4567
        rf"|(?<![\w.\-])\d{{3}}([.\-])\d{{3}}\1\d{{4}}(?![\w.\-]*\d)"                # 555-123-4567
        rf"|(?<![\w.\-])0\d{{1,4}}(?:[ \-]\d{{2,4}}){{2,4}}(?![\w.\-]*\d)"           # 020 7946 0958, 01 23 45 67 89
        rf"|(?<![\w.\-])0\d{{3,4}}[ \-]\d{{6,7}}(?![\w.\-]*\d)"                       # 07700 900123
        ), _phone_ok),
]


def find_pii(text: str, kinds: tuple[str, ...] | None = None) -> list[PIIMatch]:
    """All non-overlapping personal-data items in ``text``, sorted by position.

    ``kinds`` restricts the search to some keys of :data:`PLACEHOLDERS`.
    """
    if not isinstance(text, str):
        raise TypeError(f"find_pii expects a str, got {type(text).__name__}")
    if kinds is not None:
        unknown = set(kinds) - set(PLACEHOLDERS)
        if unknown:
            raise DataError(f"unknown PII kinds {sorted(unknown)}; choose from {list(PLACEHOLDERS)}")
    taken: list[PIIMatch] = []
    for kind, pattern, valid in _PATTERNS:
        if kinds is not None and kind not in kinds:
            continue
        for m in pattern.finditer(text):
            s, e = m.span()
            if s == e or (valid is not None and not valid(m.group())):
                continue
            if all(e <= t.start or s >= t.end for t in taken):
                taken.append(PIIMatch(kind, s, e, m.group()))
    return sorted(taken, key=lambda t: t.start)


def redact_pii(text: str, kinds: tuple[str, ...] | None = None) -> str:
    """``text`` with every item :func:`find_pii` finds replaced by its placeholder (``<EMAIL>``, ...).

    >>> redact_pii("Mail jane.doe@example.com or call +1 415 555 0132 before 2024-05-01.")
    'Mail <EMAIL> or call <PHONE> before 2024-05-01.'
    """
    out, last = [], 0
    for item in find_pii(text, kinds):
        out += [text[last : item.start], PLACEHOLDERS[item.kind]]
        last = item.end
    out.append(text[last:])
    return "".join(out)
