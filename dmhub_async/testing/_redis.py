"""A real redis-server for tests and benchmarks: started on a free loopback port in a temp dir,
killed and restarted on the same port at will, stopped at the end. Tests that need one skip, with
the reason shown, where no redis-server is installed (``apt-get install redis-server``)."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

REDIS_SERVER = shutil.which("redis-server") or (
    "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
)
SKIP_REASON = "no redis-server on this machine (apt-get install redis-server)"
START_TIMEOUT = 10.0
#: Where servers' ports are drawn from: below the usual ephemeral ranges (Linux's 32768-60999,
#: 49152-65535 elsewhere), from which ``bind(0)`` and every outgoing connection take theirs.
SERVER_PORTS = range(20000, 32768)
#: Ports tried before a first start gives up: each another process took.
PORT_TRIES = 20


def free_port() -> int:
    """A loopback port nothing listens on now, from the ephemeral range: for a port that nothing
    must answer on. Not for a server to listen on: see :func:`server_port`."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ephemeral() -> range | None:
    """The kernel's ephemeral port range, where it says (Linux), else None."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return range(int(low), int(high) + 1)
    except (OSError, ValueError):
        return None


def worker_ports(environ: Mapping[str, str] = os.environ) -> range:
    """This pytest-xdist worker's share of :data:`SERVER_PORTS` (all of it outside xdist): two
    workers never draw the same port."""
    worker = environ.get("PYTEST_XDIST_WORKER", "")  # gw0, gw1, ...
    try:
        count = max(1, int(environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
        index = int(worker[2:]) % count if worker.startswith("gw") else 0
    except ValueError:
        count, index = 1, 0
    share = len(SERVER_PORTS) // count
    start = SERVER_PORTS.start + index * share
    return range(start, start + share)


def server_port(environ: Mapping[str, str] = os.environ) -> int:
    """A loopback port for a server to listen on, free now: drawn from this worker's share of
    :data:`SERVER_PORTS`, or (where the kernel's ephemeral range overlaps them) from that range.

    :func:`free_port`'s closes its socket before the server binds it: another worker's
    ``free_port()``, or an outgoing connection's own port (a restart on the same port), could
    take it meanwhile.
    """
    ephemeral = _ephemeral()
    if ephemeral is not None and range(
        max(ephemeral.start, SERVER_PORTS.start), min(ephemeral.stop, SERVER_PORTS.stop)
    ):
        return free_port()
    ports = worker_ports(environ)
    for _ in range(100):
        port = random.randrange(ports.start, ports.stop)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue  # another program's
        return port
    return free_port()


class PortTaken(RuntimeError):
    """Another process listens on the server's port: it is not this server that answers."""


class RedisServer:
    """One redis-server process on 127.0.0.1; ``url`` stays the same across restarts."""

    def __init__(self, directory: Path, settings: Sequence[str] = ()) -> None:
        assert REDIS_SERVER is not None
        self.directory = directory
        #: More of redis-server's settings (``--rename-command EVAL ""``), at every start.
        self.settings = tuple(settings)
        self.port = server_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._proc: subprocess.Popen[bytes] | None = None
        self._started = False

    def start(self) -> None:
        """Start the server and wait (at most 10 s) until it answers PING.

        At its first start, a port another process listens on already (another worker's
        server) is left for another, ``port`` and ``url`` with it: redis-server exited at once,
        and that other server answered the PING, so that two tests shared one Redis. A restart
        keeps the port, or raises :class:`PortTaken`.
        """
        for _ in range(PORT_TRIES):
            try:
                self._start_once()
            except PortTaken:
                if self._started:
                    raise
                self.port = server_port()
                self.url = f"redis://127.0.0.1:{self.port}/0"
                continue
            self._started = True
            return
        raise PortTaken(f"every port tried was another process's ({PORT_TRIES} of them)")

    def _start_once(self) -> None:
        proc = self._proc = subprocess.Popen(
            [
                str(REDIS_SERVER),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                *self.settings,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self._proc = None
                if listened_on(self.port):  # "Address already in use"
                    raise PortTaken(f"127.0.0.1:{self.port} is another process's")
                raise RuntimeError(f"redis-server exited with {proc.returncode}")
            # Ours, not another's (which answers while ours has yet to exit), whatever its
            # protocol: a greeting that is no Redis reply (not UTF-8, say) is not ours either.
            with contextlib.suppress(OSError, ValueError):
                if self._answering() == proc.pid:
                    return
            time.sleep(0.01)
        self.kill()
        raise RuntimeError(f"redis-server did not answer in {START_TIMEOUT:g} s")

    def _answering(self) -> int | None:
        """The process id of the redis-server answering on the port (OSError: none)."""
        for line in self.command("INFO", "server").splitlines():
            if line.startswith("process_id:"):
                return int(line.partition(":")[2])
        return None

    def kill(self) -> None:
        """Kill the server at once (SIGKILL): its data is gone, as after a crash."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(timeout=10)
            self._proc = None

    def command(self, *words: str) -> str:
        """One command over a plain socket: its reply (a status, an error or a bulk string)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            request = f"*{len(words)}\r\n" + "".join(f"${len(w)}\r\n{w}\r\n" for w in words)
            sock.sendall(request.encode())
            reader = sock.makefile("rb")
            header = reader.readline().decode().rstrip("\r\n")
            if header.startswith("$") and header != "$-1":
                return reader.read(int(header[1:]) + 2)[:-2].decode()
            return header

    def commands_served(self) -> dict[str, int]:
        """Commands served since the last ``CONFIG RESETSTAT``, by name (INFO commandstats)."""
        served: dict[str, int] = {}
        for line in self.command("INFO", "commandstats").splitlines():
            if line.startswith("cmdstat_"):
                name, _, fields = line.partition(":")
                calls = dict(f.split("=") for f in fields.split(","))["calls"]
                served[name.removeprefix("cmdstat_")] = int(calls)
        return served


def listened_on(port: int) -> bool:
    """Whether a process listens on (or holds) 127.0.0.1:``port``: it cannot be bound."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as redis-server binds
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


@contextlib.contextmanager
def redis_server(directory: Path) -> Iterator[RedisServer]:
    """A started :class:`RedisServer` keeping its files in ``directory``, killed at the end."""
    server = RedisServer(directory)
    server.start()
    try:
        yield server
    finally:
        server.kill()
