"""The rule for a person's name, the same at every door: the HTTP API, the WebSocket decision,
the CLI, imports and the store itself.

A name is NFC-normalised, runs of white space become one space, the ends are trimmed, and
then it must be 1 to `MAX_NAME` characters with no control, format, line-separator,
private-use, surrogate or unassigned characters (Unicode categories Cc, Cf, Zl, Zp, Co, Cs,
Cn). That keeps ANSI escapes, bidi overrides and zero-width tricks out of terminals, logs and
the panel, while any script's letters, marks, digits, punctuation and emoji are fine.

`MAX_NAME` is the one place the length limit lives: every door calls `clean_name`, and the
panel's name field (`static/index.html`, `maxlength`) is checked against it by the tests.
"""

from __future__ import annotations

import unicodedata

MAX_NAME = 200
REFUSED_CATEGORIES = {
    "Cc": "control character",
    "Cf": "format character (e.g. a bidi override or zero-width character)",
    "Zl": "line separator",
    "Zp": "paragraph separator",
    "Co": "private-use character",
    "Cs": "unpaired surrogate",
    "Cn": "unassigned character",
}
RULE = f"a name is 1-{MAX_NAME} characters without control or format characters"


class InvalidNameError(ValueError):
    """A name that breaks the rule; the message names the rule and the offending part."""


def clean_name(raw: object) -> str:
    """The stored form of `raw`, or InvalidNameError saying which rule it breaks."""
    if not isinstance(raw, str):
        raise InvalidNameError(f"{RULE}: got {type(raw).__name__}, not text")
    # Refuse before normalising: white space other than the plain kind (tab, newline) is a
    # control character too, and NFC never produces one.
    for ch in raw:
        category = unicodedata.category(ch)
        if category in REFUSED_CATEGORIES:
            raise InvalidNameError(f"{RULE}: U+{ord(ch):04X} is a {REFUSED_CATEGORIES[category]}")
    name = " ".join(unicodedata.normalize("NFC", raw).split())
    if not name:
        raise InvalidNameError(f"{RULE}: the name is empty")
    if len(name) > MAX_NAME:
        raise InvalidNameError(f"{RULE}: this one has {len(name)}")
    return name


def printable(text: str) -> str:
    """`text` safe for a terminal: refused characters but the newline shown as \\uXXXX
    escapes. For names stored before the rule existed, and anything read from a foreign file:
    the CLI passes all its text output through it."""
    return "".join(
        f"\\u{ord(ch):04x}" if ch != "\n" and unicodedata.category(ch) in REFUSED_CATEGORIES else ch
        for ch in text
    )
