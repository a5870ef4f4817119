"""The PostgreSQL backend of the store: one database that several gates share.

`[store] url = "postgresql://user@host/db"` (or FACEGATE_STORE_URL; the password is never
logged: messages name `redact(url)`). Each gate keeps its own FAISS index, built from here at
start and kept current by `follow` (CompreFace's design: embeddings in PostgreSQL, a cache per
node, `LISTEN/NOTIFY` between them).

- Connections come from a small `psycopg_pool` pool; a connection lost (a restarted server)
  is replaced on the next use, and a transaction that met it fails cleanly (nothing written).
- The schema has its own versions (`store_schema.PG_MIGRATIONS`) in `facegate_schema`, with
  the facegate that migrated it; gates starting together migrate one at a time (an advisory
  lock). A database holding other tables but no `facegate_schema` is another program's, and
  one of a newer facegate is too: refused untouched.
- Upgrades: before migrating a database that holds data, its tables are copied into a schema
  `facegate_backup_<old version>_<UTC time>` of the same database, in the migration's
  transaction (pg_dump is not needed on the gate). Erasing a person drops every such schema in
  the erasure's transaction (`drop_backups`): a backup never outlives an erasure.
- Every transaction that writes persons or embeddings takes one advisory lock
  (`exclusive`), so across all gates such writes happen one at a time: the duplicate check of a
  new person and its insert see the same gallery, and embedding ids commit in order.
- A committed change is announced with `pg_notify` on CHANNEL (sent at commit, in commit
  order): the store's generation after it and the persons it touched.
- Erasure: PostgreSQL keeps a deleted row's bytes in its table files until VACUUM reuses the
  space, and in the write-ahead log until the segment is recycled; `reclaim` runs a targeted
  `VACUUM (FULL)` of the tables that held them, which writes the tables anew without the
  deleted rows and deletes the old files.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from typing import Any

import msgspec
import psycopg
import psycopg_pool
from psycopg import sql

from facegate import __version__
from facegate.identity import store_schema, upgrade
from facegate.identity.store_db import Row
from facegate.identity.store_schema import NewerSchemaError
from facegate.identity.store_types import GalleryChange, StoreError, StoreUnavailableError

log = logging.getLogger(__name__)

CHANNEL = "facegate_gallery"
GALLERY_LOCK = 0x46474741  # "FGGA": writers of persons and embeddings, one at a time
MIGRATE_LOCK = 0x4647534D  # "FGSM": one gate migrates the schema at a time
MAX_PAYLOAD = 7000  # NOTIFY payloads must stay under 8000 bytes: past it, "reload everything"
CONNECT_SECONDS = 10.0
# How long a query waits for a pooled connection (the database away: fail, don't hang).
POOL_WAIT_SECONDS = 3.0
# The pool retries a lost connection with a doubling delay (1, 2, 4, ... s) for this long, then
# gives up and the next query connects afresh: a database back after an outage is used again
# within seconds, not after the next step of a long backoff.
POOL_RETRY_SECONDS = 4.0
# Tables whose rows hold a person's data; VACUUM (FULL) after an erasure.
ERASED_TABLES = ("persons", "embeddings", "thumbnails", "events")
PING_SECONDS = 5.0  # a quiet listening connection is checked this often
WAIT_SECONDS = 0.25  # how long one wait for notifications lasts (the stop is seen between)
RECONNECT_MAX_SECONDS = 10.0


def is_postgres_url(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def redact(url: str) -> str:
    """The URL without its password, in the authority or as a `password=` parameter (for
    messages and logs)."""
    try:
        parts = urllib.parse.urlsplit(url)
        pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        user = parts.username
        has_password = parts.password is not None
    except ValueError:
        return "postgresql://(unparsable URL)"
    netloc = parts.netloc
    if has_password:
        netloc = f"{user or ''}:***@{netloc.rsplit('@', 1)[1]}"
    query = parts.query
    if any(k == "password" for k, _ in pairs):
        query = urllib.parse.urlencode(
            [(k, "***" if k == "password" else v) for k, v in pairs], safe="*"
        )
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


@functools.lru_cache(maxsize=256)
def _pg(sql: str) -> str:
    """The store's `?` placeholders as psycopg's."""
    return sql.replace("%", "%%").replace("?", "%s")


class PostgresTx:
    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        self._exclusive = False

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return self.conn.execute(_pg(sql), tuple(params), binary=True).fetchall()

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self.conn.execute(_pg(sql), tuple(params)).rowcount

    def run_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self.conn.cursor() as cur:
            cur.executemany(_pg(sql), [tuple(r) for r in rows])

    def exclusive(self) -> None:
        if not self._exclusive:
            self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (GALLERY_LOCK,))
            self._exclusive = True

    def notify(self, change: GalleryChange) -> None:
        payload = msgspec.json.encode(change).decode()
        if len(payload) > MAX_PAYLOAD:
            payload = msgspec.json.encode(GalleryChange(change.generation, None)).decode()
        self.conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))


def _unreachable(where: str, exc: BaseException) -> StoreError:
    return StoreUnavailableError(f"the shared store {where} is unreachable: {exc}")


class PostgresDatabase:
    kind = "postgresql"

    def __init__(self, url: str, pool: psycopg_pool.ConnectionPool[Any], *, readonly: bool):
        self._url = url
        self.where = redact(url)
        self.readonly = readonly
        self.pool = pool

    @classmethod
    def open(cls, url: str, *, readonly: bool) -> tuple[PostgresDatabase, int]:
        """The database at `url` and its schema version (0: new); the caller migrates."""
        where = redact(url)
        try:
            psycopg.conninfo.conninfo_to_dict(url)
        except psycopg.Error:  # its message may quote the password: not repeated
            raise StoreError(
                f"[store] url is not a valid PostgreSQL URL: {where}; check its escaping"
                " (a % in the password is written %25)"
            ) from None
        pool: psycopg_pool.ConnectionPool[Any] = psycopg_pool.ConnectionPool(
            url,
            min_size=1,
            max_size=4,
            kwargs={"autocommit": True, "connect_timeout": int(CONNECT_SECONDS)},
            open=False,
            check=psycopg_pool.ConnectionPool.check_connection,
            timeout=CONNECT_SECONDS,
            reconnect_timeout=POOL_RETRY_SECONDS,
            name="facegate-store",
        )
        try:
            pool.open(wait=True, timeout=CONNECT_SECONDS)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            pool.close()
            raise StoreError(
                f"cannot connect to the shared store {where}: {exc}; check [store] url"
                " (or FACEGATE_STORE_URL) and that PostgreSQL is running"
            ) from None
        db = cls(url, pool, readonly=readonly)
        try:
            version = db._schema_version()
            if version < store_schema.PG_SCHEMA_VERSION and readonly:
                raise StoreError(
                    f"{where} has schema version {version}; open it once for writing (any"
                    " writing command, or `facegate serve`) to migrate it"
                )
        except BaseException:
            pool.close()
            raise
        return db, version

    def _schema_version(self) -> int:
        rows = self.query(
            "SELECT to_regclass('facegate_schema') IS NOT NULL,"
            " (SELECT count(*) FROM pg_tables WHERE schemaname = current_schema())"
        )
        ours, tables = bool(rows[0][0]), int(rows[0][1])
        if not ours:
            if tables:
                raise StoreError(
                    f"{self.where} holds {tables} tables of another program (no facegate_schema);"
                    " refusing to use or change it. Give facegate a database of its own."
                )
            return 0
        version = int(self.query("SELECT version FROM facegate_schema")[0][0])
        if version > store_schema.PG_SCHEMA_VERSION:
            raise self._newer(version)
        return version

    def _newer(self, found: int) -> NewerSchemaError:
        """The refusal of a database at schema `found`, newer than this facegate knows,
        naming the facegate that migrated it and the copy of before."""
        by = ""
        with contextlib.suppress(psycopg.Error, StoreError, IndexError):
            by = str(self.query("SELECT facegate FROM facegate_schema")[0][0])
        backups: list[str] = []
        with contextlib.suppress(psycopg.Error, StoreError):
            backups = backup_schemas(self)
        message = upgrade.newer_postgres_message(
            self.where, found, store_schema.PG_SCHEMA_VERSION, by, backups
        )
        return NewerSchemaError(message, found)

    def migrate(self, version: int) -> upgrade.Upgrade | None:
        """Forward to the newest schema in one transaction, one gate at a time; a database
        that held data is first copied into a backup schema (what is returned)."""
        newest = store_schema.PG_SCHEMA_VERSION
        if version >= newest:
            return None
        current = version
        try:
            with self.transaction() as tx:
                tx.conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
                # Read the catalogue afresh (not `to_regclass`, which may answer from this
                # connection's cache of before the lock): has another gate migrated meanwhile?
                exists = tx.query(
                    "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname ="
                    " current_schema() AND tablename = 'facegate_schema')"
                )[0][0]
                if exists:
                    current = int(tx.query("SELECT version FROM facegate_schema")[0][0])
                if current > newest:  # a newer gate upgraded it meanwhile
                    raise self._newer(current)
                if current == newest:
                    return None
                backup = _backup(tx.conn, current) if current > 0 else None
                for target in range(current + 1, newest + 1):
                    for statement in store_schema.statements(store_schema.PG_MIGRATIONS[target]):
                        tx.conn.execute(statement.encode())
                tx.run(
                    "UPDATE facegate_schema SET version = ?, facegate = ?, migrated_at = ?",
                    (newest, __version__, time.time()),
                )
        except psycopg.Error as exc:  # beyond what `transaction` turns into StoreError
            raise StoreError(
                f"migrating {self.where} from schema {current} to {newest} failed:"
                f" {str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r};"
                " nothing was changed (the backup copy and the migration are one transaction)"
            ) from None
        if backup is None:
            return None
        log.warning(
            "upgraded the shared store %s from schema %d to %d; the data of before is in its"
            " schema %s (dropped at the next erasure of a person)",
            self.where,
            current,
            newest,
            backup,
        )
        return upgrade.Upgrade(current, newest, backup)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        try:
            with self.pool.connection(timeout=POOL_WAIT_SECONDS) as conn:
                # Binary results: vectors arrive as bytes without hex decoding (3x faster).
                rows: list[Row] = conn.execute(_pg(sql), tuple(params), binary=True).fetchall()
                return rows
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
            raise _unreachable(self.where, exc) from None

    @contextlib.contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[PostgresTx]:
        if self.readonly:
            raise StoreError("this store was opened read-only")
        try:
            with self.pool.connection(timeout=POOL_WAIT_SECONDS) as conn, conn.transaction():
                if not durable:
                    conn.execute("SET LOCAL synchronous_commit = off")
                yield PostgresTx(conn)
        except psycopg.IntegrityError as exc:
            raise StoreError(f"refused by the database: {exc}") from None
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
            raise _unreachable(self.where, exc) from None

    def agg(self, column: str) -> str:
        return f"string_agg({column}, ',')"

    def reclaim(self, wait: float) -> bool:
        """VACUUM (FULL) the tables a person's data lived in, waiting at most `wait` seconds
        for the other gates' readers to let go of them."""
        try:
            with self.pool.connection() as conn:
                conn.execute(f"SET lock_timeout = {max(1, int(wait * 1000))}")
                try:
                    conn.execute(f"VACUUM (FULL) {', '.join(ERASED_TABLES)}")
                finally:
                    conn.execute("RESET lock_timeout")
            return True
        except psycopg.errors.LockNotAvailable:
            return False
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
            log.warning("VACUUM after an erasure failed (retried later): %s", exc)
            return False

    def integrity_check(self) -> str:
        bad = self.query(
            "SELECT count(*) FROM embeddings WHERE octet_length(vector) <>"
            " 4 * CAST((SELECT value FROM meta WHERE key = 'embedding_dim') AS integer)"
        )[0][0]
        return "ok" if not bad else f"{bad} embedding rows of the wrong size"

    def follow(self, stop: threading.Event) -> Iterator[GalleryChange | None]:
        """Listen on CHANNEL on a connection of its own; reconnect (backing off) when it is
        lost, and yield None after every (re)connection: notifications sent while away are
        lost, so the caller compares generations."""
        backoff = 0.5
        while not stop.is_set():
            try:
                with psycopg.connect(
                    self._url, autocommit=True, connect_timeout=int(CONNECT_SECONDS)
                ) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    backoff = 0.5
                    yield None
                    checked = time.monotonic()
                    while not stop.is_set():
                        for note in conn.notifies(timeout=WAIT_SECONDS, stop_after=64):
                            checked = time.monotonic()
                            yield _change(note.payload)
                        if time.monotonic() - checked > PING_SECONDS:
                            conn.execute("SELECT 1")  # a dead connection raises here
                            checked = time.monotonic()
            except psycopg.Error as exc:
                log.warning(
                    "lost the shared store %s (%s); reconnecting in %.1f s",
                    self.where,
                    type(exc).__name__,
                    backoff,
                )
                stop.wait(backoff)
                backoff = min(backoff * 2, RECONNECT_MAX_SECONDS)

    def close(self) -> None:
        self.pool.close()


def backup_schemas(db: PostgresDatabase | PostgresTx) -> list[str]:
    """The upgrade backup schemas in the database, by name."""
    rows = db.query(
        "SELECT nspname FROM pg_catalog.pg_namespace WHERE starts_with(nspname, ?)"
        " ORDER BY nspname",
        (upgrade.PG_BACKUP_PREFIX,),
    )
    return [str(r[0]) for r in rows]


def _backup(conn: psycopg.Connection[Any], version: int) -> str:
    """Copy every table of the store (at schema `version`) into a new schema, in the open
    transaction: its name. The copies are plain tables (no keys, indexes or constraints)
    that autovacuum leaves alone, so no sample of them reaches pg_statistic."""
    stem = f"{upgrade.PG_BACKUP_PREFIX}{version}_{upgrade.utc_stamp(time.time()).lower()}"
    taken = {
        str(r[0])
        for r in conn.execute(
            "SELECT nspname FROM pg_catalog.pg_namespace WHERE starts_with(nspname, %s)", (stem,)
        ).fetchall()
    }
    name, n = stem, 0
    while name in taken:  # two upgrades within one second (a restore, then again)
        n += 1
        name = f"{stem}_{n}"
    schema = sql.Identifier(name)
    tables = [
        str(r[0])
        for r in conn.execute(
            "SELECT tablename FROM pg_catalog.pg_tables WHERE schemaname = current_schema()"
            " ORDER BY tablename"
        ).fetchall()
    ]
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(schema))
    for table in tables:
        copy = sql.SQL("{}.{}").format(schema, sql.Identifier(table))
        conn.execute(sql.SQL("CREATE TABLE {} AS TABLE {}").format(copy, sql.Identifier(table)))
        conn.execute(sql.SQL("ALTER TABLE {} SET (autovacuum_enabled = false)").format(copy))
    conn.execute(
        sql.SQL("COMMENT ON SCHEMA {} IS {}").format(
            schema,
            sql.Literal(
                f"facegate: the store at schema {version}, copied before facegate"
                f" {__version__} upgraded it on {upgrade.utc_iso(time.time())}; dropped when"
                " a person is erased"
            ),
        )
    )
    return name


def hold_migrations(tx: PostgresTx) -> None:
    """Until the transaction ends, no gate migrates (nor copies the store into a backup); one
    in progress commits first. An erasure takes it before it reads anything, so a migration's
    copy never holds a person being erased (and the two never deadlock on the tables)."""
    tx.conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))


def drop_backups(tx: PostgresTx) -> list[str]:
    """Drop every upgrade backup schema, in the erasure's transaction: their names."""
    hold_migrations(tx)
    names = backup_schemas(tx)
    for name in names:
        tx.conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))
    return names


def _change(payload: str) -> GalleryChange | None:
    try:
        return msgspec.json.decode(payload, type=GalleryChange)
    except msgspec.DecodeError:
        return None  # not ours: resync rather than trust it
