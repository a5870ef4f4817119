"""The name rule (`facegate.identity.names`): what is refused, what is normalised, and that
anything it accepts is clean and stable."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from facegate.identity.names import (
    MAX_NAME,
    REFUSED_CATEGORIES,
    InvalidNameError,
    clean_name,
    printable,
)


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("Ada Lovelace", "Ada Lovelace"),
        ("  Ada    Lovelace  ", "Ada Lovelace"),
        ("Zoe\u0301", "Zo\u00e9"),  # NFC: e + combining acute -> é
        ("李小龍", "李小龍"),
        ("Renée O'Connor-Smith", "Renée O'Connor-Smith"),
        ("x" * MAX_NAME, "x" * MAX_NAME),
    ],
)
def test_accepted_names(raw: str, clean: str) -> None:
    assert clean_name(raw) == clean


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("", "empty"),
        ("    ", "empty"),
        ("x" * (MAX_NAME + 1), "has 201"),
        ("Ada\x1b[31m", "U+001B is a control character"),
        ("Ada\u202eevil", "U+202E is a format character"),
        ("Ada\u200b", "U+200B is a format character"),
        ("Ada\nLovelace", "control character"),
        ("Ada\tLovelace", "control character"),
        ("Ada\u2028B", "line separator"),
        ("Ada\ue000", "private-use"),
        ("Ada\ud800", "surrogate"),
        (None, "not text"),
        (7, "not text"),
    ],
)
def test_refused_names_say_which_rule(raw: object, why: str) -> None:
    with pytest.raises(InvalidNameError, match="1-200 characters") as info:
        clean_name(raw)
    assert why in str(info.value)


@given(st.text(max_size=300))
def test_any_accepted_name_is_clean_and_stable(raw: str) -> None:
    try:
        name = clean_name(raw)
    except InvalidNameError:
        return
    assert 1 <= len(name) <= MAX_NAME
    assert name == name.strip() and "  " not in name
    assert unicodedata.is_normalized("NFC", name)
    assert not any(unicodedata.category(c) in REFUSED_CATEGORIES for c in name)
    assert clean_name(name) == name


def test_printable_escapes_what_a_terminal_would_obey() -> None:
    assert printable("Eve\x1b[2J\u202e") == "Eve\\u001b[2J\\u202e"
    assert printable("two\nlines") == "two\nlines"
    assert printable("Zoé 李") == "Zoé 李"


def test_the_panels_name_field_takes_what_the_rule_takes() -> None:
    """The limit lives in `names.MAX_NAME`; the panel's field may not cut a valid name."""
    html = (Path(__file__).resolve().parents[1] / "static" / "index.html").read_text()
    fields = re.findall(r'<input[^>]*id="register-name"[^>]*>', html)
    assert len(fields) == 1
    assert re.findall(r'maxlength="(\d+)"', fields[0]) == [str(MAX_NAME)]
