"""`facegate store migrate`: move this gate's SQLite gallery into a shared PostgreSQL store.

The copy (identity/store_copy.py) holds the data directory for writing, so that nothing
changes the gallery while it is read (`facegate serve` must be stopped), and lands in one
transaction of the PostgreSQL database: everything or nothing. The SQLite file is only read;
the user deletes it once the gate works from PostgreSQL. The URL's password is never shown.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import psycopg.conninfo

from facegate.cli.common import EXIT_OK, Context
from facegate.identity.store import DB_NAME, LOCK_NAME, Store, StoreError, StoreLockedError
from facegate.identity.store_copy import copy_store
from facegate.identity.store_postgres import is_postgres_url, redact

ACTOR = "cli"
AddCommand = Callable[..., argparse.ArgumentParser]


def _holder(data_dir: Path) -> str:
    """Who holds the data directory (its lock file names the process), for the message."""
    try:
        return (data_dir / LOCK_NAME).read_text(errors="replace").strip() or "another process"
    except OSError:
        return "another process"


def _scrub(message: str, url: str) -> str:
    """`message` without the URL's passwords (raw or decoded), or nothing if that is unsure."""
    try:
        parts = urllib.parse.urlsplit(url)
        secrets = [parts.password or ""] + [
            v for k, v in urllib.parse.parse_qsl(parts.query) if k == "password"
        ]
        netloc_password = parts.netloc.rpartition("@")[0].partition(":")[2]
    except ValueError:
        return "unparsable"
    for secret in [*secrets, netloc_password]:
        for form in {secret, urllib.parse.unquote(secret), urllib.parse.quote(secret)}:
            if form:
                message = message.replace(form, "***")
    return message.strip()


def _settings_file(ctx: Context) -> str:
    """The settings file in use, or the one to create (as `load_settings` looks for it)."""
    named = getattr(ctx.args, "settings", None) or os.environ.get("FACEGATE_SETTINGS")
    return str(named or ctx.data_dir / "settings.toml")


def cmd_store_migrate(ctx: Context) -> int:
    url: str = ctx.args.to or ctx.settings.store.url
    if not url:
        return ctx.out.fail(
            "name the PostgreSQL database to move to: --to postgresql://user@host/db"
            " (or set FACEGATE_STORE_URL, which keeps the password off the command line)"
        )
    if not is_postgres_url(url):
        return ctx.out.fail(f"--to must be a postgresql:// URL, not {redact(url)!r}")
    # `redact` leaves a password given as `?password=` in a URL without one before the host.
    where = _scrub(redact(url), url)
    try:
        psycopg.conninfo.conninfo_to_dict(url)  # libpq's own parse, before anything is opened
    except psycopg.Error as exc:
        # libpq quotes the part it cannot parse, which may be the password: never shown.
        return ctx.out.fail(
            f"--to {where}: not a URL PostgreSQL can use ({_scrub(str(exc), url)}); special"
            " characters of a password must be percent-encoded"
        )
    db = ctx.data_dir / DB_NAME
    if not db.is_file():
        return ctx.out.fail(f"no facegate data in {ctx.data_dir} (no {DB_NAME}): nothing to move")
    gate = ctx.settings.gate.id
    try:
        source = Store.open(ctx.data_dir, gate=gate)  # SQLite, whatever [store] url says
    except StoreLockedError:
        return ctx.out.fail(
            f"{ctx.data_dir} is in use by {_holder(ctx.data_dir)}: stop `facegate serve`"
            " first; the gallery must not change while it is copied"
        )
    with source, tempfile.TemporaryDirectory(prefix="facegate-migrate-") as scratch:
        # The target needs a data directory of its own to lock: the source holds this one.
        try:
            with Store.open(Path(scratch), url=url, gate=gate) as target:
                report = copy_store(source, target, gate=gate, actor=ACTOR)
        except StoreError as exc:
            return ctx.out.fail(_scrub(str(exc), url))
        except psycopg.Error as exc:  # beyond what the store turns into StoreError
            return ctx.out.fail(f"{where}: {_scrub(str(exc), url)}; nothing was copied")
        history_gates = sorted({g.gate or gate for g in source.gates()})
    moved = report.persons or report.events
    if moved:
        if url == ctx.settings.store.url:
            where_set = "[store] url (or FACEGATE_STORE_URL) already names this database"
        else:
            where_set = (
                f"set [store] url in {_settings_file(ctx)} (or FACEGATE_STORE_URL) to this"
                " database, with its password"
            )
        steps = [
            f"next: {where_set}; keep [gate] id {gate!r}, and restart `facegate serve`",
            f"the SQLite data in {db} is unchanged: delete {DB_NAME} (and {DB_NAME}-wal,"
            f" {DB_NAME}-shm) once the gate works from PostgreSQL",
        ]
        head = (
            f"copied {db} to {where}: {report.persons} person(s), {report.embeddings}"
            f" embedding(s), {report.thumbnails} thumbnail(s), {report.events} history"
            f" row(s), {report.audit} audit log entr{'y' if report.audit == 1 else 'ies'}"
            + (
                f" (model pack {report.model_pack}, {report.embedding_dim}-d)"
                if report.persons
                else ""
            )
        )
    else:
        steps = [f"{db} holds no persons and no history: there is nothing to move"]
        head = f"nothing copied to {where}"
    obj: dict[str, Any] = {
        "from": str(db),
        "to": where,
        **msgspec.to_builtins(report),
        "history_gates": history_gates,
        "next": steps,
    }
    ctx.out.emit(obj, "\n".join([head, *(f"  {s}" for s in steps)]))
    return EXIT_OK


def add_commands(
    sub: Any, add: AddCommand, common: Callable[[argparse.ArgumentParser], None]
) -> None:
    group = sub.add_parser("store", help="the identity store: move it to a shared PostgreSQL")
    common(group)
    ssub = group.add_subparsers(dest="store_command", required=True, metavar="ACTION")
    p = add(
        "migrate",
        cmd_store_migrate,
        "copy this data directory's SQLite gallery (persons, embeddings, thumbnails, history,"
        " audit log) into a PostgreSQL store, in one transaction; the SQLite data is kept",
        ssub,
    )
    p.add_argument(
        "--to",
        metavar="URL",
        help="postgresql://user[:password]@host[:port]/db (default: [store] url or"
        " FACEGATE_STORE_URL; the password is never printed)",
    )
