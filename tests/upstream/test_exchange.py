"""The lean pool for small upstream exchanges (`gateway.upstream.exchange`), under asyncio's loop and under uvloop's
(the one `dicom-gateway serve` runs), against scripted HTTP peers and the real Orthanc."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest
import uvloop
from yarl import URL

from gateway.upstream import exchange
from gateway.upstream.exchange import (
    BadAnswer,
    ConnectFailed,
    Disconnected,
    ExchangePool,
    ReadTimedOut,
    Unsendable,
)
from tests.support.orthanc import Orthanc, free_port

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

RUNNERS = {"asyncio": asyncio.run, "uvloop": uvloop.run}


@pytest.fixture(params=sorted(RUNNERS))
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, Any]], Any]:
    """Runs a coroutine on a fresh loop of that kind (the test itself is synchronous)."""
    return RUNNERS[request.param]


def pool(port: int, **limits: float) -> ExchangePool:
    settings = {"max_connections": 4, "connect_s": 2.0, "read_s": 2.0, "pool_s": 2.0, "keepalive_s": 5.0, **limits}
    return ExchangePool(URL(f"http://127.0.0.1:{port}"), max_connections=int(settings.pop("max_connections")),
                        **settings)


async def read_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


async def with_peer(handler: Handler, body: Callable[[int], Awaitable[Any]]) -> Any:
    """Serve `handler` on a free port while `body(port)` runs; then close everything it opened, so that the loop
    closes clean (uvloop refuses to close with handles still open)."""
    writers: list[asyncio.StreamWriter] = []
    tasks: set[asyncio.Task[None]] = set()

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await handler(reader, writer)

    server = await asyncio.start_server(tracked, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        return await body(port)
    finally:
        server.close()
        for writer in writers:
            writer.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()
        await asyncio.sleep(0.01)


async def send_once(port: int) -> Any:
    """One GET /x through a fresh pool, closed afterwards."""
    exchanges = pool(port)
    try:
        return await exchanges.send("GET", "/x", [], None)
    finally:
        exchanges.close()


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n[]"


def test_one_connection_serves_many_exchanges_and_the_head_is_what_was_asked(run: Any) -> None:
    connections, heads = [], []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        while True:
            try:
                heads.append(await read_head(reader))
            except asyncio.IncompleteReadError:
                return
            writer.write(OK)

    async def body(port: int) -> list[Any]:
        exchanges = pool(port)
        answers = [await exchanges.send("GET", f"/dicom-web/studies?n={i}", [("Accept", "application/dicom+json")],
                                        None) for i in range(20)]
        exchanges.close()
        return answers

    answers = run(with_peer(handler, body))
    assert [(a.status, a.body, a.headers["content-type"]) for a in answers] == [(200, b"[]", "application/json")] * 20
    assert len(connections) == 1
    assert heads[3] == (b"GET /dicom-web/studies?n=3 HTTP/1.1\r\nHost: 127.0.0.1:" + str(connections[0]
                        .get_extra_info("sockname")[1]).encode() + b"\r\nAccept: application/dicom+json\r\n\r\n")


def test_a_large_answer_in_one_write_is_read_whole(run: Any) -> None:
    """The head's bound counts reads until the head is complete, never the body that came in the same read."""
    body = b"x" * (3 * 1024 * 1024)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()

    assert run(with_peer(handler, send_once)).body == body


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nabcdefg",
    b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nabcdefg",  # delimited by the close
])
def test_chunked_interim_and_close_delimited_answers_are_read_whole(run: Any, answer: bytes) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        for i in range(0, len(answer), 5):  # in pieces, as a slow network delivers it
            writer.write(answer[i:i + 5])
            await writer.drain()
        if b"Connection: close" in answer:
            writer.close()

    got = run(with_peer(handler, send_once))
    assert (got.status, got.body) == (200, b"abcdefg")


# DELETE as GET: the security clean-ups (a refused upload's instances removed again) are DELETEs.
@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_a_request_whose_reused_connection_dies_unanswered_is_sent_again_but_a_post_is_not(
        run: Any, method: str) -> None:
    requests: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await read_head(reader)
                requests.append(b" ".join(head.split(b" ", 2)[:2]))
                if b"Content-Length" in head:
                    await reader.readexactly(1)
                if len(requests) in (2, 4):  # the second and fourth requests: hang up without an answer
                    writer.close()
                    return
                writer.write(OK)
                await writer.drain()
        except asyncio.IncompleteReadError:
            return

    async def body(port: int) -> tuple[int, type[Exception] | None]:
        exchanges = pool(port)
        await exchanges.send("GET", "/one", [], None)
        again = await exchanges.send(method, "/two", [], None)  # dies once, sent again on a new connection
        error: type[Exception] | None = None
        try:
            await exchanges.send("POST", "/three", [], b"x")  # the 4th request the peer sees: hung up on
        except Disconnected as exc:
            error = type(exc)
        exchanges.close()
        return again.status, error

    status, error = run(with_peer(handler, body))
    assert status == 200
    assert error is Disconnected
    sent = method.encode()
    assert requests == [b"GET /one", sent + b" /two", sent + b" /two", b"POST /three"]


def test_failures_are_the_pools_errors(run: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(exchange, "MAX_ANSWER_BYTES", 4 * 1024 * 1024)
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")  # then nothing
        await asyncio.sleep(5)

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"SMTP ready\r\n\r\n")

    async def huge_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n" + b"X-A: " + b"a" * 70_000 + b"\r\n\r\n")

    async def endless_header(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nX-A: ")
        for _ in range(2000):  # 16 MiB of one header line that never ends: refused after 64 KiB
            writer.write(b"a" * 8192)
            await writer.drain()

    async def endless_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(100_000):
            writer.write(b"2\r\nab\r\n" * 1000)
            await writer.drain()

    async def expect(handler: Handler, error: type[Exception], **limits: float) -> None:
        async def body(port: int) -> None:
            exchanges = pool(port, **limits)
            with pytest.raises(error):
                await exchanges.send("GET", "/x", [], None)
            exchanges.close()
        await with_peer(handler, body)

    async def refused() -> None:
        with pytest.raises(ConnectFailed):
            await pool(free_port()).send("GET", "/x", [], None)

    async def all_of_them() -> None:
        await expect(stall, ReadTimedOut, read_s=0.3)
        await expect(garbage, BadAnswer)
        await expect(huge_head, BadAnswer)
        await expect(endless_header, BadAnswer)
        await expect(endless_body, BadAnswer)
        await refused()

    run(all_of_them())


def test_a_head_that_would_split_the_request_is_refused_before_sending(run: Any) -> None:
    async def body() -> None:
        exchanges = pool(free_port())
        for target, headers in (("/a b", []), ("/a", [("X", "1\r\nEvil: 2")]), ("/a\n", []), ("/a", [("X", "\0")])):
            with pytest.raises(Unsendable, match="control character"):
                await exchanges.send("GET", target, headers, None)
        with pytest.raises(Unsendable, match="Latin-1"):
            await exchanges.send("GET", "/a", [("Authorization", "Bearer \u2603")], None)

    run(body())


def test_orthancs_answers_through_the_pool(run: Any, orthanc: Orthanc) -> None:
    async def body() -> list[int]:
        exchanges = pool(orthanc.http_port)
        statuses = []
        for _ in range(5):
            answer = await exchanges.send("GET", "/dicom-web/studies?limit=1", [("Accept", "application/dicom+json")],
                                          None)
            statuses.append(answer.status)
        lookup = await exchanges.send("POST", "/tools/lookup", [("Content-Type", "text/plain")], b"1.2.3")
        statuses.append(lookup.status)
        exchanges.close()
        return statuses

    assert run(body()) == [200] * 6


def test_bytes_after_an_answer_drop_the_connection_and_are_never_the_next_answer(run: Any) -> None:
    """An upstream that answers twice (or trails bytes) must not shift answers by one: each request gets its own."""
    connections: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        while True:
            head = await read_head(reader)
            name = head.split(b" ", 2)[1]
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(name), name))
            if name == b"/first":  # a second, unasked-for answer, in the same write and then after a pause
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale")
            await writer.drain()
            if name == b"/second":
                await asyncio.sleep(0.05)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale")

    async def body(port: int) -> list[bytes]:
        exchanges = pool(port)
        answers = []
        for name in ("/first", "/second", "/third", "/fourth"):
            answers.append((await exchanges.send("GET", name, [], None)).body)
            await asyncio.sleep(0.1)
        exchanges.close()
        return answers

    assert run(with_peer(handler, body)) == [b"/first", b"/second", b"/third", b"/fourth"]
    assert len(connections) == 3  # a new connection after each of the two answers that trailed bytes


def test_hosts_are_written_as_rfc_9110_says_and_credentials_refused() -> None:
    cases = {"http://[::1]:8042": b"Host: [::1]:8042", "https://pacs.example": b"Host: pacs.example\r\n",
             "http://pacs.example:80": b"Host: pacs.example\r\n", "http://10.0.0.1:8042": b"Host: 10.0.0.1:8042"}
    for url, host in cases.items():
        pool = ExchangePool(URL(url), max_connections=1, connect_s=1, read_s=1, pool_s=1, keepalive_s=1)
        assert host in pool._head("GET", "/x", [], None)
    with pytest.raises(ValueError, match="credentials"):
        ExchangePool(URL("http://u:p@pacs:1"), max_connections=1, connect_s=1, read_s=1, pool_s=1, keepalive_s=1)
