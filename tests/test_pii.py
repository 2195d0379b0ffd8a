"""Tests of minillm.pii: every labelled item of each kind is redacted, non-PII text is untouched."""

from __future__ import annotations

import pytest

from minillm.pii import PLACEHOLDERS, find_pii, iban_valid, luhn_valid, redact_pii

LABELLED = {
    "email": ["jane.doe@example.com", "first+tag@mail.co.uk", "a_b-c@sub.domain.org", "X.Y@Example.COM",
              "support@my-company.io"],
    "phone": ["+1 415 555 0132", "+44 20 7946 0958", "+33 1 23 45 67 89", "+49 30 12345678", "+14155550132",
              "+91-98765-43210", "0044 20 7946 0958", "(415) 555-0132", "415-555-0132", "415.555.0132",
              "020 7946 0958", "07700 900123", "01 23 45 67 89", "030 1234 5678"],
    "ip_address": ["192.168.0.1", "8.8.8.8", "255.255.255.255", "2001:db8:85a3::8a2e:370:7334",
                   "fe80::1ff:fe23:4567:890a", "2001:0db8:0000:0000:0000:ff00:0042:8329"],
    # test numbers published by card networks (Visa, Mastercard, Amex, Discover), all Luhn-valid
    "credit_card": ["4111 1111 1111 1111", "4111-1111-1111-1111", "5500005555555559", "378282246310005",
                    "6011 1111 1111 1117", "4012888888881881"],
    # example IBANs from the ISO 13616 registry (Germany, UK, France, Netherlands)
    "iban": ["DE89 3704 0044 0532 0130 00", "GB82WEST12345698765432", "FR14 2004 1010 0505 0001 3M02 606",
             "NL91ABNA0417164300"],
    "secret": ["AKIAIOSFODNN7EXAMPLE", "ghp_a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8",
               "sk-proj-abcdefghijklmnopqrstuv123456", "xoxb-1234567890-abcdefghij",
               "AIzaSyA-1234567890abcdefghijklmnopqrstu", "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
               "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"],
}

NOT_PII = [
    "Python 3.11.2 was released on 2023-02-08.",
    "It costs $1,299.99 or €45.50, down from 1.499,00 EUR.",
    "Population: 8,336,817 in 2020.",
    "Meet at 12:30:45 on 15/01/2024, or 2024-01-15T10:30:00Z.",
    "ISBN 978-0-13-110362-7",
    "Call me at noon; room 404.",
    "pi is 3.14159265358979",
    "version 1.2.3.4.5 and build 20240115.3",
    "x[1::2] and a[::3] are slices.",
    "The year 1999 and 2000-2010.",
    "Order #1234567890123 shipped.",
    "The ratio was 0.5 to 0.75.",
    "See RFC 2616 section 14.9.",
    "total = 4111111111111112",
    "Timestamp 1700000000",
    "Temperatures of -12.5 to 30.2 C",
    "coordinates 51.5074, -0.1278",
    "10 000 people came; 2 500 stayed.",
    "Please follow the password reset instructions.",
    "ID 12345-67890, at 1 pm on 01 02 2024",
    "def f(a, b):\n    return a<b and b>0  # compare\n",
    "Email me later, at the usual address.",
    "The key to success is patience.",
    "passwd = fallback_getpass(prompt, stream)",
    "password = input_from_user",
]


@pytest.mark.parametrize("kind", list(LABELLED))
def test_every_labelled_item_is_redacted(kind):
    placeholder = PLACEHOLDERS[kind]
    for item in LABELLED[kind]:
        for template in ("{}", "Contact: {}. Thanks", "({}),", "Line one\n{}\nline three"):
            text = template.format(item)
            assert redact_pii(text) == template.format(placeholder), (kind, item, template)
        assert [m.kind for m in find_pii(f"x {item} y")] == [kind]


def test_non_pii_text_is_unchanged():
    for text in NOT_PII:
        assert redact_pii(text) == text, find_pii(text)


def test_several_items_in_one_text():
    text = ("Write to jane@example.org or call +1 415 555 0132; card 4111 1111 1111 1111 expires 2027-03. "
            "Server 10.0.0.7 runs Python 3.12.1.")
    assert redact_pii(text) == ("Write to <EMAIL> or call <PHONE>; card <CREDIT_CARD> expires 2027-03. "
                                "Server <IP_ADDRESS> runs Python 3.12.1.")
    assert [m.kind for m in find_pii(text)] == ["email", "phone", "credit_card", "ip_address"]
    assert redact_pii(text, kinds=("email",)).startswith("Write to <EMAIL> or call +1 415")


def test_key_value_secrets_and_private_keys():
    assert redact_pii('api_key = "Zx81hQ0plM4nB7vC2r"') == 'api_key = "<SECRET>"'
    assert redact_pii("PASSWORD: hunter2hunter2hunter2") == "PASSWORD: <SECRET>"
    assert redact_pii("password: short") == "password: short"  # too short to be a generated secret
    pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7\nabc+/=\n-----END RSA PRIVATE KEY-----"
    assert redact_pii(f"key:\n{pem}\ndone") == "key:\n<PRIVATE_KEY>\ndone"
    public = "-----BEGIN PUBLIC KEY-----\nMFkwEwYH\n-----END PUBLIC KEY-----"
    assert redact_pii(public) == public


def test_validators_by_hand():
    assert luhn_valid("79927398713")  # the textbook Luhn example
    assert not luhn_valid("79927398710")
    assert not luhn_valid("12a4")
    assert iban_valid("GB82 WEST 1234 5698 7654 32")
    assert not iban_valid("GB83 WEST 1234 5698 7654 32")  # one check digit off
    assert redact_pii("GB83WEST12345698765432") == "GB83WEST12345698765432"
    assert redact_pii("4111 1111 1111 1112") == "4111 1111 1111 1112"  # fails Luhn


def test_bad_input():
    with pytest.raises(TypeError, match="expects a str"):
        redact_pii(b"bytes")
    with pytest.raises(ValueError, match="unknown PII kinds"):
        find_pii("x", kinds=("ssn",))
