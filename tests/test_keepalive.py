"""Pooled keep-alive connections the server closed: a write must not be lost to them.

A raw HTTP/1.1 server on 127.0.0.1 closes its side of a connection the way servers and load
balancers do (after each answer without saying ``Connection: close``, or while the connection
waits idle in the client's pool); the client's next create must reach the service, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from typing import Any

import pytest

from dmhub_async import APIConnectionError, DMHubClient, NotFoundError
from dmhub_async.testing import FakeClock


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    """The next request's line, its headers and body read (b"" once the client closed)."""
    request_line = await reader.readline()
    length = 0
    while request_line and (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return request_line


class RawServer:
    """Answers every request with a customer; records (connection number, method, path).

    ``close_after_answer``: closes the connection after each answer (``header``: saying
    ``Connection: close`` first, as it should; else without a word, as some servers do).
    """

    def __init__(self, *, close_after_answer: bool = False, header: bool = False) -> None:
        self.close_after_answer = close_after_answer
        self.header = header
        self.received: list[tuple[int, str, str]] = []
        self._writers: list[asyncio.StreamWriter] = []
        self._connections = 0
        self._server: asyncio.Server | None = None
        self.url = ""

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self.close_connections()
        await self._server.wait_closed()

    async def close_connections(self) -> None:
        """Close every connection from the server's side (a FIN), as an idle timeout does."""
        writers, self._writers = self._writers, []
        for writer in writers:
            writer.close()
        for writer in writers:
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _accept(self, writer: asyncio.StreamWriter) -> int:
        """Keep ``writer`` for :meth:`close_connections`; the connection's number, from 1."""
        self._writers.append(writer)
        self._connections += 1
        return self._connections

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = self._accept(writer)
        try:
            while request_line := await _read_request(reader):
                method, target, _ = request_line.decode().split(" ", 2)
                self.received.append((number, method, target.split("?")[0]))
                body = json.dumps({"id": len(self.received), "name": "a"}).encode()
                close = "Connection: close\r\n" if self.header else ""
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(body)}\r\n{close}\r\n".encode()
                    + body
                )
                await writer.drain()
                if self.close_after_answer:
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


class ServerThread:
    """A :class:`RawServer` on an event loop of its own, in a thread: another machine, whose
    work goes on while the test's event loop is busy."""

    def __init__(self, server: RawServer | None = None, **settings: Any) -> None:
        self.server = server if server is not None else RawServer(**settings)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def run(self, coroutine: Any) -> Any:
        """``coroutine``'s result, run on the server's loop (this thread waits: at most 5 s)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=5)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def received(self) -> list[tuple[int, str, str]]:
        return self.server.received

    def close_connections(self) -> None:
        """Close every connection from the server's side, and wait until it has."""
        self.run(self.server.close_connections())

    def __enter__(self) -> ServerThread:
        self._thread.start()
        self.run(self.server.__aenter__())
        return self

    def __exit__(self, *exc: object) -> None:
        self.run(self.server.__aexit__())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()


async def test_a_create_after_a_busy_spell_does_not_take_a_connection_the_server_closed() -> None:
    # The service closed the idle pooled connection (its keep-alive timeout) while this event
    # loop was busy with other work: the FIN had arrived, unread. The create took that
    # connection, its request met the closed socket, and it failed with outcome_unknown=True,
    # telling the caller to check for a customer the service had never been asked to make.
    clock = FakeClock()
    with ServerThread() as server:
        async with DMHubClient(
            access_token="tok", base_url=server.url, clock=clock, sleep=clock.sleep
        ) as dm:
            first = await dm.customers.create(name="a")
            # Busy: this loop does not turn while the server closes the connection.
            server.close_connections()
            second = await dm.customers.create(name="b")

        assert (first.id, second.id) == (1, 2)
        assert server.received == [(1, "POST", "/v1/customers"), (2, "POST", "/v1/customers")]
        assert (dm.stats.requests, dm.stats.retries) == (2, 0)


@pytest.mark.parametrize(
    "server_settings",
    [
        pytest.param({"close_after_answer": True}, id="closed after each answer, unannounced"),
        pytest.param({"close_after_answer": True, "header": True}, id="Connection: close"),
        pytest.param({}, id="kept alive"),
    ],
)
async def test_creates_in_a_row_each_reach_the_service_once(server_settings: Any) -> None:
    # A server that closes each connection after its answer without "Connection: close": the
    # FIN came with the answer, but the next create took the connection before the event loop
    # had read it, and failed with outcome_unknown=True although the service never saw it
    # (every second create of a loop, one after another).
    clock = FakeClock()
    async with RawServer(**server_settings) as server:  # on this loop: its close comes first
        async with DMHubClient(
            access_token="tok", base_url=server.url, clock=clock, sleep=clock.sleep
        ) as dm:
            made = [(await dm.customers.create(name=f"c{i}")).id for i in range(4)]

        assert made == [1, 2, 3, 4]
        assert [method for _, method, _ in server.received] == ["POST"] * 4
        assert (dm.stats.requests, dm.stats.retries) == (4, 0)  # no create failed, none retried


class TimingOutServer(RawServer):
    """Answers the first request of each connection; the next one it answers with 408 Request
    Timeout and closes: its keep-alive timeout ran out as that request came."""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = self._accept(writer)
        try:
            while request_line := await _read_request(reader):
                method = request_line.decode().split(" ", 1)[0]
                if any(n == number for n, _, _ in self.received):
                    self.received.append((number, method, "408"))
                    writer.write(
                        b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n"
                        b"Content-Length: 0\r\n\r\n"
                    )
                    await writer.drain()
                    break
                self.received.append((number, method, "200"))
                body = json.dumps({"id": len(self.received), "name": "a"}).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def test_a_call_the_server_answered_408_as_it_timed_the_connection_out_is_sent_again() -> (
    None
):
    # A server whose keep-alive timeout runs out as a request arrives may answer it 408 Request
    # Timeout, unprocessed (RFC 9110, 15.5.9), and close. The call failed with APIError 408,
    # not retried, a create as well as a get.
    clock = FakeClock()
    server = TimingOutServer()
    async with server:
        async with DMHubClient(
            access_token="tok", base_url=server.url, clock=clock, sleep=clock.sleep
        ) as dm:
            first = await dm.customers.create(name="a")
            second = await dm.customers.create(name="b")
            got = await dm.customers.get(7)

        assert (first.id, second.id, got.id) == (1, 3, 5)
        assert server.received == [
            (1, "POST", "200"),
            (1, "POST", "408"),
            (2, "POST", "200"),
            (2, "GET", "408"),
            (3, "GET", "200"),
        ]
        assert dm.stats.retries == 2


class LosingServer(RawServer):
    """Carries out each write and drops its connection before the answer (a reset, a server
    restarting); the same write again, the customer gone, it answers "no such customer"."""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = self._accept(writer)
        try:
            while request_line := await _read_request(reader):
                method, target, _ = request_line.decode().split(" ", 2)
                path = target.split("?")[0]
                again = any((m, p) == (method, path) for _, m, p in self.received)
                self.received.append((number, method, path))
                if not again:
                    break  # applied; the answer is lost with the connection
                body = b'{"error_code": 40201, "error_description": "no such customer"}'
                writer.write(
                    b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def test_a_delete_whose_answer_was_lost_is_not_sent_again_unseen() -> None:
    # aiohttp sends a PUT or a DELETE again by itself when the connection drops before an
    # answer: the repeat found the customer gone, and the caller got a plain NotFoundError,
    # the customer deleted by their own delete.
    clock = FakeClock()
    async with LosingServer() as server:
        async with DMHubClient(
            access_token="tok", base_url=server.url, clock=clock, sleep=clock.sleep
        ) as dm:
            with pytest.raises(NotFoundError) as info:
                await dm.customers.delete(7)

        assert info.value.outcome_unknown is True
        assert "may have been applied" in str(info.value)
        # Sent twice: once, and once again by the client's own retry, which it counts.
        assert [m for _, m, _ in server.received] == ["DELETE", "DELETE"]
        assert (dm.stats.requests, dm.stats.retries) == (2, 1)


async def test_a_write_not_to_be_repeated_is_sent_once_when_its_answer_is_lost() -> None:
    # An update the caller said must not be repeated (idempotent=False) reached the service
    # twice, its error saying "it was not repeated".
    clock = FakeClock()
    async with LosingServer() as server:
        async with DMHubClient(
            access_token="tok", base_url=server.url, clock=clock, sleep=clock.sleep
        ) as dm:
            with pytest.raises(APIConnectionError) as info:
                await dm.request("PUT", "/v1/customers/8", json={"name": "b"}, idempotent=False)

        assert info.value.outcome_unknown is True
        assert server.received == [(1, "PUT", "/v1/customers/8")]


@pytest.mark.parametrize("write", ["update", "delete"])
async def test_an_update_or_delete_after_a_busy_spell_is_sent_once(write: str) -> None:
    # aiohttp no longer sends them again on a connection the server closed: the closes that
    # came in are read first, as before a create.
    clock = FakeClock()
    with ServerThread() as server:
        async with DMHubClient(
            access_token="tok", base_url=server.url, clock=clock, sleep=clock.sleep
        ) as dm:
            await dm.customers.get(1)
            server.close_connections()  # while this loop is busy
            if write == "update":
                await dm.customers.update(1, name="b")
            else:
                await dm.request("DELETE", "/v1/customers/1")

        method = "PUT" if write == "update" else "DELETE"
        assert server.received == [(1, "GET", "/v1/customers/1"), (2, method, "/v1/customers/1")]
        assert (dm.stats.requests, dm.stats.retries) == (2, 0)


class StrayAnswerServer(RawServer):
    """Answers each request with its customer (the id in its path), then, once told, sends one
    answer more on the connection, unasked and kept open: a proxy's or a server's bug that
    left a second answer behind the first."""

    def __init__(self) -> None:
        super().__init__()
        self.stray = asyncio.Queue[asyncio.StreamWriter]()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = self._accept(writer)
        try:
            while request_line := await _read_request(reader):
                method, target, _ = request_line.decode().split(" ", 2)
                path = target.split("?")[0]
                self.received.append((number, method, path))
                cid = int(path.rsplit("/", 1)[1])
                body = json.dumps({"id": cid, "name": f"c{cid}"}).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
                self.stray.put_nowait(writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def send_stray(self) -> None:
        """One answer more, for customer 666, on the connection that answered last."""
        writer = await self.stray.get()
        body = b'{"id": 666, "name": "stray"}'
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()


@pytest.mark.parametrize("busy", [False, True], ids=["read by the loop", "loop busy"])
@pytest.mark.parametrize("write", [False, True], ids=["get", "update"])
async def test_an_answer_nobody_asked_for_is_never_taken_for_the_next_call_s(
    busy: bool, write: bool
) -> None:
    # A second answer came on an idle pooled connection after the first had been read (a
    # server's or a proxy's bug). The next call took that connection and read the stray answer
    # as its own: get(2) returned customer 666, and every later call on the connection the
    # answer of the call before it.
    clock = FakeClock()
    server = StrayAnswerServer()
    with ServerThread(server) as thread:
        async with DMHubClient(
            access_token="tok", base_url=server.url, clock=clock, sleep=clock.sleep
        ) as dm:
            assert (await dm.customers.get(1)).id == 1
            thread.run(server.send_stray())  # this loop is busy meanwhile: unread
            if not busy:
                for _ in range(3):  # the loop's turns read what came in
                    await asyncio.sleep(0)
            if write:
                second = await dm.customers.update(2, name="b")
            else:
                second = await dm.customers.get(2)
            third = await dm.customers.get(3)

    assert (second.id, third.id) == (2, 3)
    assert [path for _, _, path in server.received] == [f"/v1/customers/{n}" for n in (1, 2, 3)]
    assert (dm.stats.requests, dm.stats.retries) == (3, 0)
