"""Shared pieces of the fuzz suites (Hypothesis): the example budget, an app without models,
and strategies for JSON, WebSocket frames, multipart bodies and junk images.

FACEGATE_FUZZ_EXAMPLES sets the examples per target: 100 by default (the unit run), 10,000
under `make fuzz`.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import sys
import traceback
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import cv2
import msgspec
import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient
from starlette.types import ASGIApp, Receive, Scope, Send

from facegate.live.sources import ImageFolderSource
from facegate.server.app import MAX_WS_MESSAGE, create_app
from facegate.server.runtime import Runtime
from facegate.settings import load_settings
from fakes import NoFaces

EXAMPLES = int(os.environ.get("FACEGATE_FUZZ_EXAMPLES", "100"))
WsSession = Any  # starlette.testclient.WebSocketTestSession


def fuzz_settings(**overrides: Any) -> settings:
    """`@fuzz_settings()`: EXAMPLES examples, no deadline, random (not derandomized)."""
    return settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
        **overrides,
    )


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of the strategies, picked in proportion to its weight (shrinks to the first)."""
    pool = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.sampled_from(pool).flatmap(lambda strategy: strategy)


# -- an app without the model pack -------------------------------------------------------------
class CrashRecorder:
    """ASGI wrapper: an exception escaping the WebSocket endpoint is recorded and the socket
    closed with 1011, so the client sees it at once instead of waiting on a silent socket.
    (HTTP exceptions already reach the test: TestClient re-raises them.)"""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.crashes: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        except Exception as exc:
            self.crashes.append("".join(traceback.format_exception(exc)))
            with contextlib.suppress(Exception):
                await send({"type": "websocket.close", "code": 1011, "reason": "crashed"})


@contextlib.contextmanager
def serve_without_models(tmp: Path) -> Iterator[tuple[TestClient, Runtime, CrashRecorder]]:
    """The real app over a grey 64x48 frame in a loop, with an analyzer that finds no face."""
    frames = tmp / "frames"
    frames.mkdir()
    assert cv2.imwrite(str(frames / "grey.jpg"), np.full((48, 64, 3), 128, np.uint8))
    settings = load_settings(environ={})
    # Commands at the fuzz's pace: the rate limiter would answer most of them 429 before
    # their bodies are read.
    server = msgspec.structs.replace(
        settings.server, commands_per_second=1000.0, command_burst=1000
    )
    runtime = Runtime(
        msgspec.structs.replace(settings, server=server),
        tmp / "data",
        ImageFolderSource(frames, fps=10),
        NoFaces,
        loop_source=True,
    )
    app = CrashRecorder(create_app(runtime))
    with TestClient(app) as client:
        yield client, runtime, app


# -- WebSocket helpers (TestClient's receive has no timeout) -----------------------------------
def recv(ws: WsSession, timeout: float = 5.0) -> dict[str, Any]:
    """The next message as JSON; WebSocketDisconnect when closed; TimeoutError when silent."""

    async def get() -> Any:
        with anyio.fail_after(timeout):
            return await ws._send_rx.receive()

    message = ws.portal.call(get)
    ws._raise_on_close(message)
    result: dict[str, Any] = json.loads(message["text"])
    return result


# -- leaks and memory --------------------------------------------------------------------------
@contextlib.contextmanager
def no_leaks() -> Iterator[list[str]]:
    """What the block left to finalizers: ResourceWarnings (an unclosed upload file) and any
    exception raised in a __del__, as text. Works with and without -W error."""
    caught: list[str] = []
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        caught.append(f"{unraisable.exc_type.__name__}: {unraisable.exc_value}")

    sys.unraisablehook = hook
    try:
        with warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always", ResourceWarning)
            yield caught
        caught.extend(f"{w.category.__name__}: {w.message}" for w in warned)
    finally:
        sys.unraisablehook = previous


def rss_bytes() -> int:
    """This process's resident set size now (Linux), else its peak (getrusage)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# -- JSON --------------------------------------------------------------------------------------
KEYS = ("type", "data", "register", "name", "token", "message", "force", "")
TYPES = ("ping", "reset_system", "registration_decision", "auth", "pong", "connected", "")

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**200), max_value=2**200)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
    | st.text(max_size=400)
)
json_keys = st.sampled_from(KEYS) | st.text(max_size=12)
json_values = st.recursive(
    json_scalars,
    lambda kids: st.lists(kids, max_size=6) | st.dictionaries(json_keys, kids, max_size=6),
    max_leaves=40,
)


def names_text() -> st.SearchStrategy[str]:
    """Names of every kind and length: control and format characters, combining marks."""
    return (
        st.text(max_size=250)
        | st.text(st.characters(categories=["Cc", "Cf", "Zs", "Zl", "Zp", "Mn"]), max_size=20)
        | st.sampled_from(["", " ", "\u200b", "a\x00b", "\u202eevil", "x" * 201, "e\u0301" * 120])
    )


def names() -> st.SearchStrategy[Any]:
    """What a client may put in a `name`: any text, or not text at all."""
    return names_text() | json_values


def decision_data() -> st.SearchStrategy[dict[str, Any]]:
    """`registration_decision` payloads: right shape, wrong types, missing and extra keys."""
    return st.fixed_dictionaries(
        {},
        optional={
            "register": st.booleans() | json_values,
            "name": names(),
            "extra": json_values,
            "token": json_values,
        },
    )


def message_like() -> st.SearchStrategy[dict[str, Any]]:
    """Client messages that look valid: known and unknown types, data of any shape."""
    return st.fixed_dictionaries(
        {"type": st.sampled_from(TYPES) | st.text(max_size=20) | json_values},
        optional={
            "data": st.dictionaries(json_keys, json_values, max_size=4)
            | json_values
            | st.fixed_dictionaries({"token": json_values}),
            "extra": json_values,
        },
    ) | st.fixed_dictionaries(
        {"type": st.just("registration_decision"), "data": decision_data()},
        optional={"extra": json_values},
    )


@st.composite
def dumped(draw: st.DrawFn, values: st.SearchStrategy[Any]) -> str:
    """A JSON document (NaN/Infinity allowed: not JSON, but what a sloppy client sends)."""
    value = draw(values)
    return json.dumps(
        value,
        ensure_ascii=draw(st.booleans()),
        separators=draw(st.sampled_from([(",", ":"), (", ", ": ")])),
    )


DEEP_TEMPLATES = (
    "{X}",
    '{"type":"ping","x":{X}}',
    '{"x":{X},"type":"ping"}',
    '{"type":"ping","data":{X}}',
    '{"type":"reset_system","data":{"a":{X}}}',
    '{"type":"registration_decision","data":{"register":true,"name":{X}}}',
    '{"type":"registration_decision","data":{"register":true},"x":{X}}',
    '{"type":"auth","data":{"token":{X}}}',
)


class Described(str):
    """Text that a failure report shows as the recipe that made it, not 64 KiB of brackets."""

    description = ""

    def __repr__(self) -> str:
        return self.description

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> DescribedBytes:
        return described(super().encode(encoding, errors), f"{self.description}.encode()")


class DescribedBytes(bytes):
    description = ""

    def __repr__(self) -> str:
        return self.description


def plain(value: str | bytes) -> str | bytes:
    """The exact str or bytes (msgspec refuses subclasses, as a real socket never makes)."""
    return str(value) if isinstance(value, str) else bytes(value)


def described(value: str | bytes, description: str) -> Any:
    out = Described(value) if isinstance(value, str) else DescribedBytes(value)
    out.description = description
    return out


def nested(template: str, opener: str, closer: str, depth: int, core: str = "0") -> Described:
    """`template` with {X} replaced by `depth` levels of `opener`...`closer` around `core`."""
    text = template.replace("{X}", opener * depth + core + closer * depth)
    args = ", ".join(map(repr, (template, opener, closer, depth, core)))
    return described(text, f"nested({args})")  # type: ignore[no-any-return]


@st.composite
def deep_json(draw: st.DrawFn, budget: int = MAX_WS_MESSAGE) -> Described:
    """Nesting as deep as fits in `budget` bytes, somewhere in an otherwise valid message."""
    template = draw(st.sampled_from(DEEP_TEMPLATES))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}"), ('[{"a":', "}]")]))
    room = (budget - len(template)) // (len(opener) + len(closer))
    depth = draw(st.integers(1, room) | st.integers(900, min(room, 5000)))
    core = draw(st.sampled_from(["0", '""', "null", "[]", ""]))
    return nested(template, opener, closer, depth, core)


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes], max_ops: int = 4) -> bytes:
    """`base` with a few byte-level mutations: overwrite, delete, insert, duplicate, truncate."""
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(1, max_ops))):
        n = len(data)
        op = draw(st.sampled_from(["set", "delete", "insert", "duplicate", "truncate"]))
        i = draw(st.integers(0, n))
        j = draw(st.integers(i, min(n, i + 64)))
        if op == "set" and i < n:
            data[i] = draw(st.integers(0, 255))
        elif op == "delete":
            del data[i:j]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif op == "duplicate":
            data[j:j] = data[i:j]
        elif op == "truncate":
            del data[i:]
    return bytes(data)


def utf8(strategy: st.SearchStrategy[str]) -> st.SearchStrategy[bytes]:
    return strategy.map(lambda text: text.encode())


def client_messages() -> st.SearchStrategy[str]:
    """Text a client can send: JSON of any shape, message look-alikes, deep nesting, junk."""
    return (
        dumped(json_values)
        | dumped(message_like())
        | deep_json()
        | st.text(max_size=200)
        | utf8(dumped(message_like())).flatmap(
            lambda raw: mutated(st.just(raw)).map(lambda b: b.decode("utf-8", "replace"))
        )
    )


def client_bytes() -> st.SearchStrategy[bytes]:
    """Binary payloads: the same messages as bytes, invalid UTF-8 inside JSON, random bytes."""
    valid = utf8(dumped(message_like()))
    return (
        valid
        | utf8(deep_json())
        | mutated(valid)
        | st.binary(max_size=300)
        | st.builds(
            lambda head, junk, tail: head + junk + tail,
            st.sampled_from([b'{"type":"ping","data":{},"x":"', b'{"type":"', b'{"', b""]),
            st.binary(min_size=1, max_size=8).filter(not_utf8),
            st.sampled_from([b'"}', b'","data":{}}', b""]),
        )
        | st.sampled_from([b"\xff\xfe", b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b""])
    )


def not_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return True
    return False


@st.composite
def oversize_text(draw: st.DrawFn) -> Described:
    """Text frames around the 64 KiB limit, counted in UTF-8 bytes (1-4 bytes a character)."""
    char = draw(st.sampled_from(["x", "\u00e9", "\u20ac", "\U0001f600"]))
    width = len(char.encode())
    head = '{"type":"ping","data":{},"pad":"'
    target = MAX_WS_MESSAGE + draw(st.integers(-8, 8))
    count = max(0, (target - len(head) - 2) // width)
    return described(head + char * count + '"}', f"{head!r} + {char!r} * {count} + '\"}}'")  # type: ignore[no-any-return]


@st.composite
def oversize_bytes(draw: st.DrawFn) -> DescribedBytes:
    size = MAX_WS_MESSAGE + draw(st.integers(-4, 4) | st.integers(5, 2 * MAX_WS_MESSAGE))
    unit = draw(st.sampled_from([b"x", b"[", b"\xff"]))
    return described(unit * size, f"{unit!r} * {size}")  # type: ignore[no-any-return]


# -- images ------------------------------------------------------------------------------------
def _encoded(ext: str, width: int = 64, height: int = 48) -> bytes:
    ok, data = cv2.imencode(ext, np.full((height, width, 3), 128, np.uint8))
    assert ok
    return bytes(data.tobytes())


GREY_JPEG = _encoded(".jpg")
GREY_PNG = _encoded(".png")
GREY_BMP = _encoded(".bmp")


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = zlib.compress(b"\x00" + b"\x00" * 3)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def jpeg_claiming(width: int, height: int) -> bytes:
    """A JPEG header (SOI, SOF0) claiming width x height, then nothing decodable."""
    sof = struct.pack(">BHHB", 8, height, width, 3) + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    return b"\xff\xd8\xff\xc0" + struct.pack(">H", len(sof) + 2) + sof + b"\xff\xd9"


def junk_images() -> st.SearchStrategy[bytes]:
    """Photo uploads that are not quite photos."""
    side = st.integers(0, 2**32 - 1) | st.integers(0, 70_000)
    valid = st.sampled_from([GREY_JPEG, GREY_PNG, GREY_BMP])
    return (
        valid
        | mutated(valid, max_ops=8)
        | valid.flatmap(lambda b: st.integers(0, len(b)).map(lambda n: b[:n]))
        | st.builds(png_claiming, side, side)
        | st.builds(jpeg_claiming, side.map(lambda v: v & 0xFFFF), side.map(lambda v: v & 0xFFFF))
        | st.builds(
            lambda magic, rest: magic + rest,
            st.sampled_from(
                [b"\xff\xd8", b"\x89PNG\r\n\x1a\n", b"BM", b"GIF89a", b"RIFF\0\0\0\0WEBP", b"II*\0"]
            ),
            st.binary(max_size=256),
        )
        | st.binary(max_size=512)
    )


# -- multipart ---------------------------------------------------------------------------------
Part = tuple[str, str | None, str | None, bytes]  # field name, filename, content type, content


def header_text(max_size: int = 40) -> st.SearchStrategy[str]:
    """Header-ish text: anything printable (quotes, semicolons, unicode), no line breaks."""
    return st.text(
        st.characters(exclude_categories=["Cs"], exclude_characters="\r\n"), max_size=max_size
    )


def parts(field_names: list[str]) -> st.SearchStrategy[Part]:
    """One part, mostly of a field the endpoint reads, with content fit for that field (so
    a bad `name` does not stop every request before its photos are read)."""
    return weighted((4, st.sampled_from(field_names)), (1, header_text(20))).flatmap(part)


def part(field: str) -> st.SearchStrategy[Part]:
    filename = weighted(
        (3, st.sampled_from(["a.jpg", "photo.png"])),
        (1, st.none()),
        (1, st.sampled_from(["../../x.png", "", 'q"uote.jpg', "a\\b.jpg", "\u00e9.jpg"])),
        (1, header_text()),
    )
    ctype = weighted(
        (3, st.sampled_from(["image/jpeg", "image/png"])),
        (1, st.none() | st.sampled_from(["text/plain", "application/octet-stream"])),
        (1, header_text()),
    )
    value = {
        "name": weighted((3, st.sampled_from([b"Ann", b"Jos\xc3\xa9"])), (1, utf8(names_text()))),
        "force": st.sampled_from([b"1", b"true", b"yes", b"no", b"", b"\xff"]),
    }

    content = weighted(
        (4, value.get(field, junk_images())), (1, junk_images() | utf8(st.text(max_size=100)))
    )
    return st.tuples(st.just(field), filename, ctype, content)


def encode_multipart(
    parts: list[Part], boundary: bytes, *, crlf: bytes = b"\r\n", extra: bytes = b""
) -> bytes:
    out = bytearray()
    for name, filename, ctype, content in parts:
        out += b"--" + boundary + crlf
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += b"Content-Disposition: " + disposition.encode() + crlf
        if ctype is not None:
            out += b"Content-Type: " + ctype.encode() + crlf
        out += extra + crlf + content + crlf
    out += b"--" + boundary + b"--" + crlf
    return bytes(out)


boundaries = st.sampled_from([b"facegate", b"-", b"a" * 70, b"x" * 300, b"\xff\xfe"]) | st.binary(
    min_size=1, max_size=40
).filter(lambda b: b"\r" not in b and b"\n" not in b)


@st.composite
def multipart_requests(
    draw: st.DrawFn, field_names: list[str], required: list[str]
) -> tuple[str, bytes]:
    """(Content-Type header, body): well-formed, mutated, broken and oversized multipart;
    usually with the `required` fields, then more parts of any field."""
    boundary = draw(weighted((3, st.sampled_from([b"facegate", b"x" * 70])), (1, boundaries)))
    shape = draw(
        weighted(
            (4, st.just("valid")),
            (3, st.just("mutated")),
            (1, st.sampled_from(["no-crlf", "lf-only", "huge-header", "many", "cut"])),
        )
    )
    part_list = [draw(part(f)) for f in required if draw(st.integers(0, 9))]
    part_list += draw(st.lists(parts(field_names), max_size=3))
    if shape == "many":
        one = draw(parts(field_names))
        part_list = [one] * draw(st.integers(20, 1500))
    extra = b""
    if shape == "huge-header":
        size = draw(st.integers(1, 200_000))
        extra = b"X-Junk: " + b"h" * size + b"\r\n"
    body = encode_multipart(part_list, boundary, extra=extra)
    if shape == "mutated":
        body = draw(mutated(st.just(body), max_ops=6))
    elif shape == "no-crlf":
        body = body.replace(b"\r\n", b"")
    elif shape == "lf-only":
        body = body.replace(b"\r\n", b"\n")
    elif shape == "cut":
        body = body[: draw(st.integers(0, len(body)))]
    declared = boundary.decode("latin-1")
    content_type = draw(
        weighted(
            (6, st.just(f"multipart/form-data; boundary={declared}")),
            (
                2,
                st.sampled_from(
                    [
                        f'multipart/form-data; boundary="{declared}"',
                        f"Multipart/Form-Data; charset=utf-8; boundary={declared}",
                        f"multipart/form-data; boundary={declared}x",
                        "multipart/form-data",
                        "multipart/form-data; boundary=",
                        "multipart/form-data; boundary=" + declared * 3,
                    ]
                ),
            ),
            (
                1,
                st.sampled_from(
                    [
                        "multipart/mixed; boundary=" + declared,
                        "application/x-www-form-urlencoded",
                        "",
                    ]
                )
                | header_text(80),
            ),
        )
    )
    return content_type, body
