"""A real MQTT broker for the tests: Debian's Mosquitto on a free loopback port, and a real
MQTT subscriber (aiomqtt in a thread) that collects what it hears.

Three broker variants, each with a config generated into its own folder:
- "anonymous": anyone may connect;
- "password": a password file made with `mosquitto_passwd -b -c`, `allow_anonymous false`;
- "tls": a self-signed CA and a server certificate for 127.0.0.1 made with the `openssl` CLI
  (`Broker.ca_file`), on a TLS-only listener.

No persistence: a restarted broker has forgotten every retained message, so whatever a new
subscriber finds retained after a restart was published again by its clients. The broker's log
goes to `Broker.log_path`; `Broker.log()` reads it (for assertion messages).

    with Broker(tmp_path, "password") as broker:
        with Subscriber(broker, ["facegate/#"]) as sub:
            publish(broker, "facegate/x", b"1", retain=True)
            sub.wait_for("facegate/x")
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import aiomqtt

from ports import free_port

Variant = Literal["anonymous", "password", "tls"]

MOSQUITTO_CANDIDATES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
DEFAULT_USER = "gate"
DEFAULT_PASSWORD = "s3cret-Pa55"


def find_mosquitto() -> str | None:
    """The broker's executable, or None (`make setup` installs Debian's `mosquitto`)."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return next((p for p in MOSQUITTO_CANDIDATES if os.access(p, os.X_OK)), None)


def missing_tools(variant: Variant = "anonymous") -> str | None:
    """Why this variant cannot run here (a sentence for pytest.skip), or None."""
    if find_mosquitto() is None:
        return "mosquitto is not installed (`make setup` installs Debian's mosquitto)"
    if variant == "password" and shutil.which("mosquitto_passwd") is None:
        return "mosquitto_passwd is not installed (Debian's mosquitto package has it)"
    if variant == "tls" and shutil.which("openssl") is None:
        return "the openssl command is not installed (needed to make a test CA)"
    return None


def _run(cmd: list[str], cwd: Path) -> None:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()}")


def make_test_ca(folder: Path, host: str = "127.0.0.1") -> tuple[Path, Path, Path]:
    """A self-signed CA and a server certificate for `host` (IP and DNS SANs) signed by it,
    with the openssl CLI: (ca.crt, server.crt, server.key). EC P-256, valid for two days."""
    folder.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ca_ext = ["-addext", "basicConstraints=critical,CA:TRUE"]
    ca_ext += ["-addext", "keyUsage=critical,keyCertSign,cRLSign"]
    ca = ["openssl", "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2"]
    _run([*ca, "-subj", "/CN=facegate test CA", *ca_ext], folder)
    csr = ["openssl", "req", "-new", *ec, "-keyout", "server.key", "-out", "server.csr"]
    _run([*csr, "-subj", f"/CN={host}"], folder)
    (folder / "server.ext").write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        f"subjectAltName=IP:{host},DNS:localhost\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
    )
    sign = ["openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key"]
    _run(
        [*sign, "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "server.ext"],
        folder,
    )
    for key in ("ca.key", "server.key"):
        (folder / key).chmod(0o600)
    return folder / "ca.crt", folder / "server.crt", folder / "server.key"


class Broker:
    """Mosquitto on 127.0.0.1:`port` (a free one unless given), started by `start()` (or `with`)."""

    def __init__(
        self,
        folder: Path,
        variant: Variant = "anonymous",
        *,
        port: int | None = None,
        users: dict[str, str] | None = None,
    ) -> None:
        reason = missing_tools(variant)
        if reason is not None:
            raise RuntimeError(reason)
        self.executable = find_mosquitto() or "mosquitto"
        self.folder = folder
        self.variant: Variant = variant
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.users = dict(users) if users is not None else {DEFAULT_USER: DEFAULT_PASSWORD}
        self.ca_file: Path | None = None
        self.log_path = folder / "mosquitto.log"
        self.config_path = folder / "mosquitto.conf"
        self.starts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)
        self._write_config()

    # -- configuration -----------------------------------------------------------------------
    def _write_config(self) -> None:
        lines = [
            f"listener {self.port} {self.host}",
            "persistence false",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp true",
            "log_timestamp_format %H:%M:%S",
        ]
        if os.geteuid() == 0:
            # As root, Mosquitto would switch to the `mosquitto` user, who cannot read a
            # private tmp folder.
            lines.append("user root")
        if self.variant == "password":
            passwd = self.folder / "passwd"
            passwd.unlink(missing_ok=True)
            tool = shutil.which("mosquitto_passwd") or "mosquitto_passwd"
            for i, (user, password) in enumerate(self.users.items()):
                create = ["-c"] if i == 0 else []
                _run([tool, "-b", *create, str(passwd), user, password], self.folder)
            passwd.chmod(0o600)
            lines += ["allow_anonymous false", f"password_file {passwd}"]
        else:
            # Mosquitto 2 refuses anonymous clients on a configured listener unless told.
            lines.append("allow_anonymous true")
        if self.variant == "tls":
            ca, cert, key = make_test_ca(self.folder / "tls", self.host)
            self.ca_file = ca
            lines += [f"cafile {ca}", f"certfile {cert}", f"keyfile {key}"]
            lines.append("tls_version tlsv1.2")
        self.config_path.write_text("\n".join(lines) + "\n")

    # -- URLs and client options ---------------------------------------------------------------
    @property
    def scheme(self) -> str:
        return "mqtts" if self.variant == "tls" else "mqtt"

    def url(self, user: str | None = None, password: str | None = None) -> str:
        """A client URL; for the password variant, the first user's credentials by default."""
        if self.variant == "password" and user is None:
            user, password = next(iter(self.users.items()))
        auth = ""
        if user is not None:
            auth = f"{user}:{password}@" if password is not None else f"{user}@"
        return f"{self.scheme}://{auth}{self.host}:{self.port}"

    def client_kwargs(self, *, credentials: bool = True, ca: bool = True) -> dict[str, object]:
        """aiomqtt.Client keyword arguments that connect to this broker."""
        kwargs: dict[str, object] = {"hostname": self.host, "port": self.port}
        if self.variant == "password" and credentials:
            user, password = next(iter(self.users.items()))
            kwargs |= {"username": user, "password": password}
        if self.variant == "tls":
            context = ssl.create_default_context(
                cafile=str(self.ca_file) if ca and self.ca_file else None
            )
            kwargs["tls_context"] = context
        return kwargs

    # -- process ---------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout: float = 10.0) -> Broker:
        if self.running:
            return self
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"---- start {self.starts} ----\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                [self.executable, "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Until the listener accepts TCP connections, else raise with the broker's log."""
        deadline = time.monotonic() + timeout
        while True:
            if self._proc is None or self._proc.poll() is not None:
                code = None if self._proc is None else self._proc.returncode
                raise RuntimeError(f"mosquitto exited ({code}) on start:\n{self.log()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.host, self.port), timeout=0.5),
            ):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto did not listen on {self.port}:\n{self.log()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (the broker closes its clients' connections), SIGKILL if it lingers."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        # The port must be free again before a restart binds it.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    pass
            except OSError:
                return
            time.sleep(0.05)

    def restart(self, down_seconds: float = 0.0, timeout: float = 10.0) -> None:
        """Stop, stay down for `down_seconds`, start again on the same port (no retained
        messages survive: persistence is off)."""
        self.stop()
        if down_seconds:
            time.sleep(down_seconds)
        self.start(timeout)

    def log(self, tail: int = 200) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "(no mosquitto log)"
        return "\n".join(lines[-tail:])

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Broker {self.variant} {self.host}:{self.port} {state}>"


# -- clients -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    qos: int
    at: float = field(default_factory=time.monotonic)  # time.monotonic() on arrival
    at_ns: int = field(default_factory=time.perf_counter_ns)

    @property
    def text(self) -> str:
        return self.payload.decode("utf-8", errors="replace")


class Subscriber:
    """A real MQTT client in its own thread (and event loop), subscribed to `topics`, keeping
    every message it receives (with its retained flag), in order. With `reconnect`, it connects
    again (and subscribes again) whenever the broker goes away, until closed.

    `wait_for(topic, predicate)` blocks until a matching message arrived (counting those
    already received, unless `after` is given), else raises TimeoutError listing what came.
    """

    def __init__(
        self,
        broker: Broker,
        topics: Iterable[str] = ("#",),
        *,
        qos: int = 1,
        connect_timeout: float = 10.0,
        reconnect: bool = False,
        **client_kwargs: object,
    ) -> None:
        self.broker = broker
        self.reconnect = reconnect
        self.connections = 0  # sessions so far
        self.disconnects = 0  # connections lost (reconnect=True: it connects again)
        self.topics = list(topics)
        self.qos = qos
        self.connect_timeout = connect_timeout
        self.client_kwargs = broker.client_kwargs() | client_kwargs
        self.messages: list[Received] = []
        self.error: BaseException | None = None
        self._cond = threading.Condition()
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="mqtt-subscriber", daemon=True)

    # -- thread ----------------------------------------------------------------------------
    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # reported to the test thread, never lost in this one
            self.error = exc
        finally:
            self._ready.set()
            with self._cond:
                self._cond.notify_all()

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        while True:
            try:
                await self._session(self._stop)
                return  # closed
            except aiomqtt.MqttError:
                if not (self.reconnect and self._ready.is_set()):
                    raise
            # Connected once and lost the broker (a restart): try again until closed.
            self.disconnects += 1
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.2):
                    await self._stop.wait()
            if self._stop.is_set():
                return

    async def _session(self, stop: asyncio.Event) -> None:
        async with aiomqtt.Client(**self.client_kwargs) as client:  # type: ignore[arg-type]
            for topic in self.topics:
                await client.subscribe(topic, qos=self.qos)
            self.connections += 1
            self._ready.set()
            reader = asyncio.create_task(self._read(client))
            stopped = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait({reader, stopped}, return_when=asyncio.FIRST_COMPLETED)
            for task in (reader, stopped):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if reader in done and reader.exception() is not None:
                raise reader.exception()  # type: ignore[misc]

    async def _read(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload
            if isinstance(payload, str):
                payload = payload.encode()
            elif payload is None:
                payload = b""
            elif not isinstance(payload, bytes | bytearray):
                payload = str(payload).encode()
            got = Received(message.topic.value, bytes(payload), bool(message.retain), message.qos)
            with self._cond:
                self.messages.append(got)
                self._cond.notify_all()

    # -- the test's side -------------------------------------------------------------------
    def start(self) -> Subscriber:
        self._thread.start()
        if not self._ready.wait(self.connect_timeout):
            raise TimeoutError(f"subscriber did not connect to {self.broker}")
        if self.error is not None:
            raise RuntimeError(f"subscriber could not connect: {self.error!r}") from self.error
        return self

    def close(self) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and self._thread.is_alive():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
        self._thread.join(10)

    def __enter__(self) -> Subscriber:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self.error is None

    def received(self, topic: str | None = None) -> list[Received]:
        with self._cond:
            return [m for m in self.messages if topic is None or m.topic == topic]

    def topics_seen(self) -> set[str]:
        with self._cond:
            return {m.topic for m in self.messages}

    def latest(self, topic: str) -> Received | None:
        got = self.received(topic)
        return got[-1] if got else None

    def wait_for(
        self,
        topic: str | Callable[[str], bool],
        predicate: Callable[[Received], bool] | None = None,
        *,
        timeout: float = 10.0,
        after: int = 0,
    ) -> Received:
        """The first message (from index `after` on) on `topic` (a name or a test on names)
        that satisfies `predicate`."""
        match = topic if callable(topic) else (lambda t: t == topic)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for m in self.messages[after:]:
                    if match(m.topic) and (predicate is None or predicate(m)):
                        return m
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    break
                self._cond.wait(min(left, 0.25))
            seen = sorted({m.topic for m in self.messages[after:]})
        why = f" (subscriber stopped: {self.error!r})" if self.error else ""
        raise TimeoutError(
            f"no matching message on {topic if isinstance(topic, str) else 'the topics'} within"
            f" {timeout:.0f} s{why}; topics seen: {seen}"
        )

    def mark(self) -> int:
        """The number of messages so far: pass as `after=` to wait for newer ones only."""
        with self._cond:
            return len(self.messages)


async def _publish(
    broker: Broker, messages: list[tuple[str, bytes, bool]], qos: int, kwargs: dict[str, object]
) -> None:
    async with aiomqtt.Client(**(broker.client_kwargs() | kwargs)) as client:  # type: ignore[arg-type]
        for topic, payload, retain in messages:
            await client.publish(topic, payload, qos=qos, retain=retain)


def publish(
    broker: Broker,
    topic: str,
    payload: bytes | str,
    *,
    retain: bool = False,
    qos: int = 1,
    **client_kwargs: object,
) -> None:
    """Publish one message from a short-lived client (QoS 1: acknowledged by the broker)."""
    data = payload.encode() if isinstance(payload, str) else payload
    asyncio.run(_publish(broker, [(topic, data, retain)], qos, dict(client_kwargs)))


def refusal(broker: Broker, **client_kwargs: object) -> str | None:
    """Try to connect and publish with these client options: the error as "Type: message"
    (None if it worked).

    paho leaves the socket of a failed TLS handshake open until it is garbage collected: it is
    collected here, with its ResourceWarning (an error under pytest's filter) silenced."""
    error = None
    try:
        publish(broker, "refusal/probe", b"", **client_kwargs)
    except (aiomqtt.MqttError, OSError) as exc:
        error = f"{type(exc).__name__}: {exc}"  # not the exception: its frames hold the socket
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()
    return error


def retained(
    broker: Broker, topics: Iterable[str] = ("#",), settle: float = 1.0, **client_kwargs: object
) -> dict[str, Received]:
    """The retained messages a NEW subscriber is given (collected for `settle` seconds)."""
    with Subscriber(broker, topics, **client_kwargs) as sub:
        time.sleep(settle)
        return {m.topic: m for m in sub.received() if m.retain}


@contextlib.contextmanager
def dump_log_on_failure(*brokers: Broker) -> Iterator[None]:
    """Re-raise an AssertionError/TimeoutError with the brokers' logs appended."""
    try:
        yield
    except (AssertionError, TimeoutError) as exc:
        logs = "\n".join(f"== {b} log ==\n{b.log(80)}" for b in brokers)
        raise type(exc)(f"{exc}\n{logs}") from exc
