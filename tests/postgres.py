"""A real PostgreSQL for the tests: Debian's server binaries (/usr/lib/postgresql/<ver>/bin), a
throw-away cluster made with `initdb` in a temporary folder, started with `pg_ctl` on a free
port (a Unix socket in the same folder, and TCP on 127.0.0.1), trust authentication.

initdb and the server refuse to run as root: when the tests run as root, the folder is given to
the `postgres` OS user (which Debian's package creates) and the binaries run as that user (the
root test process can still reach the socket and read every file).

Roles: `postgres` (the superuser, `admin_url`) and `facegate` (LOGIN, CREATEDB), the owner of
the `facegate` database (`url`) and of every database that `database()` creates. Settings for
speed, not durability: `fsync=off`, initdb `--no-sync`. The server's log is `log_path`;
`log()` reads its tail (shown when a start fails).

    server = PostgresServer().start()
    url = server.database()          # a fresh, empty database owned by `facegate`
    with psycopg.connect(url) as conn: ...
    server.restart()                 # same port and data: clients must reconnect
    server.close()                   # stop (immediate) and remove the folder

Fixtures (exposed to every test by tests/conftest.py): `pg_server`, one server per session,
and `pg_url`, a fresh empty database per test; both skip with a reason when the binaries are
absent.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from ports import free_port

PG_ROOT = Path("/usr/lib/postgresql")
ROLE = "facegate"
SUPERUSER = "postgres"
OS_USER = "postgres"  # who runs the binaries when the tests run as root
MISSING = (
    "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin; "
    "`make setup` installs them"
)
_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def _has_tools(folder: Path) -> bool:
    return all(os.access(folder / tool, os.X_OK) for tool in ("initdb", "pg_ctl", "postgres"))


def _version_key(folder: Path) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in folder.parent.name.split("."))
    except ValueError:
        return (-1,)


def find_pg_bin() -> Path | None:
    """$FACEGATE_PG_BIN if it holds initdb and pg_ctl, else the newest
    /usr/lib/postgresql/<version>/bin that does, else None."""
    override = os.environ.get("FACEGATE_PG_BIN")
    if override:
        return Path(override) if _has_tools(Path(override)) else None
    found = [b for b in PG_ROOT.glob("*/bin") if _has_tools(b)]
    return max(found, key=_version_key) if found else None


class PostgresServer:
    """One PostgreSQL cluster in its own temporary folder, started by `start()` (or `with`)."""

    def __init__(self, pg_bin: Path | None = None, *, port: int | None = None) -> None:
        found = pg_bin or find_pg_bin()
        if found is None:
            raise RuntimeError(MISSING)
        self.pg_bin = found
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.folder = Path(tempfile.mkdtemp(prefix="facegate-pg-"))
        self.data_dir = self.folder / "data"
        self.socket_dir = self.folder / "sock"
        self.log_path = self.folder / "postgres.log"
        self.starts = 0
        self._initialised = False
        self._bootstrapped = False
        self._names = itertools.count(1)
        self._as_user: dict[str, Any] = {}
        self.socket_dir.mkdir()
        if os.geteuid() == 0:
            try:
                entry = pwd.getpwnam(OS_USER)
            except KeyError:
                self._remove_folder()
                raise RuntimeError(
                    f"running as root, and there is no `{OS_USER}` OS user to run PostgreSQL"
                    " (Debian's postgresql package creates it)"
                ) from None
            for path in (self.folder, self.socket_dir):
                os.chown(path, entry.pw_uid, entry.pw_gid)
            self._as_user = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        self.folder.chmod(0o755)
        self.socket_dir.chmod(0o777)

    # -- URLs --------------------------------------------------------------------------------
    def _socket_url(self, user: str, dbname: str) -> str:
        return (
            f"postgresql://{user}@/{dbname}"
            f"?host={quote(str(self.socket_dir), safe='/')}&port={self.port}"
        )

    @property
    def url(self) -> str:
        """The `facegate` database as the `facegate` role, over the Unix socket."""
        return self._socket_url(ROLE, ROLE)

    @property
    def tcp_url(self) -> str:
        """The same over TCP on 127.0.0.1 (trust authentication: no password)."""
        return f"postgresql://{ROLE}@{self.host}:{self.port}/{ROLE}"

    def admin_url(self, dbname: str = "postgres") -> str:
        """`dbname` as the superuser (CHECKPOINT, pg_relation_filepath, pg_terminate_backend)."""
        return self._socket_url(SUPERUSER, dbname)

    def url_for(self, dbname: str, *, tcp: bool = False) -> str:
        if tcp:
            return f"postgresql://{ROLE}@{self.host}:{self.port}/{dbname}"
        return self._socket_url(ROLE, dbname)

    # -- processes ---------------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        # PGDATA, PGPORT, PGHOST... from the caller's environment must not steer the tools.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        return env

    def _tool(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.pg_bin / args[0]), *args[1:]],
            cwd=self.folder,
            env=self._env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
            **self._as_user,
        )

    def _initdb(self) -> None:
        done = self._tool(
            "initdb",
            "-D",
            str(self.data_dir),
            "-U",
            SUPERUSER,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        settings = {
            "port": str(self.port),
            "listen_addresses": f"'{self.host}'",
            "unix_socket_directories": f"'{self.socket_dir}'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "shared_buffers": "'32MB'",
            "max_connections": "100",
            "log_min_messages": "warning",
        }
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# facegate tests (tests/postgres.py)\n")
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
        self._initialised = True

    @property
    def running(self) -> bool:
        return (
            self._initialised
            and self._tool("pg_ctl", "status", "-D", str(self.data_dir)).returncode == 0
        )

    def start(self, timeout: float = 30.0) -> PostgresServer:
        if not self._initialised:
            self._initdb()
        elif self.running:
            return self
        self.starts += 1
        done = self._tool(
            "pg_ctl",
            "start",
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_path),
            "-w",
            "-t",
            str(int(timeout)),
            timeout=timeout + 10,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"pg_ctl start failed ({done.returncode}): {done.stderr.strip()}\n"
                f"== {self.log_path} ==\n{self.log()}"
            )
        if not self._bootstrapped:
            self._bootstrap()
            self._bootstrapped = True
        return self

    def _bootstrap(self) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.admin_url(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEDB").format(sql.Identifier(ROLE)))
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(ROLE), sql.Identifier(ROLE)
                )
            )

    def stop(self, mode: str = "fast", timeout: float = 30.0) -> None:
        """pg_ctl stop: "fast" (clients are disconnected, a clean shutdown), "immediate" (a
        crash, recovered from WAL at the next start) or "smart" (waits for clients)."""
        if not self._initialised:
            return
        done = self._tool(
            "pg_ctl",
            "stop",
            "-D",
            str(self.data_dir),
            "-m",
            mode,
            "-w",
            "-t",
            str(int(timeout)),
            timeout=timeout + 10,
        )
        if done.returncode != 0 and self.running:
            raise RuntimeError(f"pg_ctl stop failed: {done.stderr.strip()}\n{self.log()}")

    def kill(self) -> None:
        """Stop like a crash (pg_ctl stop -m immediate): no shutdown checkpoint."""
        self.stop("immediate")

    def restart(self, mode: str = "fast", timeout: float = 30.0) -> None:
        """Stop then start on the same port and data: every client connection is broken."""
        self.stop(mode, timeout)
        self.start(timeout)

    def close(self) -> None:
        """Stop at once and remove the whole folder (data, socket, log)."""
        try:
            self.stop("immediate")
        finally:
            self._remove_folder()

    def _remove_folder(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    # -- databases ---------------------------------------------------------------------------
    def database(self, name: str | None = None) -> str:
        """CREATE DATABASE `name` (a fresh `test_<n>` when None) owned by `facegate`: its URL."""
        import psycopg
        from psycopg import sql

        dbname = name or f"test_{next(self._names)}"
        if not _NAME.fullmatch(dbname):
            raise ValueError(f"not a plain database name: {dbname!r}")
        with psycopg.connect(self.admin_url(), autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(dbname), sql.Identifier(ROLE)
                )
            )
        return self.url_for(dbname)

    def log(self, tail: int = 60) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "(no PostgreSQL log)"
        return "\n".join(lines[-tail:])

    def __enter__(self) -> PostgresServer:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<PostgresServer {self.pg_bin.parent.name} port {self.port} in {self.folder}>"


# -- fixtures (tests/conftest.py imports them) -----------------------------------------------
@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session (skips when the binaries are absent)."""
    pg_bin = find_pg_bin()
    if pg_bin is None:
        override = os.environ.get("FACEGATE_PG_BIN")
        if override:
            pytest.skip(f"FACEGATE_PG_BIN={override} lacks initdb, pg_ctl or postgres")
        pytest.skip(MISSING)
    with PostgresServer(pg_bin) as server:
        yield server


@pytest.fixture
def pg_url(pg_server: PostgresServer) -> str:
    """A fresh, empty database on the session's server, owned by `facegate`: its URL."""
    if not pg_server.running:  # a test that stopped it and failed before starting it again
        with contextlib.suppress(RuntimeError):
            pg_server.start()
    return pg_server.database()
