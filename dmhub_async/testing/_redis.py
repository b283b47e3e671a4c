"""A real redis-server for tests and benchmarks: started on a free loopback port in a temp dir,
killed and restarted on the same port at will, stopped at the end. Tests that need one skip, with
the reason shown, where no redis-server is installed (``apt-get install redis-server``)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

REDIS_SERVER = shutil.which("redis-server") or (
    "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
)
SKIP_REASON = "no redis-server on this machine (apt-get install redis-server)"
START_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One redis-server process on 127.0.0.1; ``url`` stays the same across restarts."""

    def __init__(self, directory: Path) -> None:
        assert REDIS_SERVER is not None
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the server and wait (at most 10 s) until it answers PING."""
        self._proc = subprocess.Popen(
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
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._proc.returncode}")
            with contextlib.suppress(OSError):
                if self.command("PING") == "+PONG":
                    return
            time.sleep(0.01)
        raise RuntimeError(f"redis-server did not answer in {START_TIMEOUT:g} s")

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


@contextlib.contextmanager
def redis_server(directory: Path) -> Iterator[RedisServer]:
    """A started :class:`RedisServer` keeping its files in ``directory``, killed at the end."""
    server = RedisServer(directory)
    server.start()
    try:
        yield server
    finally:
        server.kill()
