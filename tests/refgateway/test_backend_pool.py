"""refgateway's kept-alive client to plain HTTP backends (refgateway/_edge.py BackendPool).

A real asyncio TCP server on loopback answers with scripted bytes, so framing, reuse and
the one retry on a connection the backend had closed are seen on real sockets.
"""

from __future__ import annotations

import asyncio

import h11
import pytest

from refgateway._edge import BackendPool

GET = h11.Request(method="GET", target="/x", headers=[("host", "example.com")])
POST = h11.Request(method="POST", target="/x", headers=[("host", "example.com")])


class Scripted:
    """A backend answering the n-th request it reads with answers[n] (then closing if
    close_after); an answer of None closes the connection without a byte of an answer."""

    def __init__(self, answers: list[bytes], close_after: set[int] = frozenset()):
        self.answers, self.close_after = answers, close_after
        self.requests: list[bytes] = []
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                n = len(self.requests)
                self.requests.append(head)
                if self.answers[n] is None:
                    break
                writer.write(self.answers[n])
                await writer.drain()
                if n in self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def run(backend: Scripted, *requests: h11.Request, between=None) -> list[tuple[int, list, bytes]]:
    """The requests one after the other through one pool; ``between(pool)`` is awaited after each."""
    async def main():
        server = await asyncio.start_server(backend.handle, "127.0.0.1", 0)
        endpoint = ("127.0.0.1", server.sockets[0].getsockname()[1])
        pool = BackendPool(asyncio.get_running_loop())
        out = []
        for req in requests:
            out.append(await asyncio.wait_for(pool.request(endpoint, req, [(b"host", b"example.com")], b""), 10))
            if between:
                await between(pool)
        server.close()
        return out

    return asyncio.run(main())


def test_content_length_answers_reuse_one_connection():
    b = Scripted([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: b\r\n\r\nok"] * 3)
    answers = run(b, GET, GET, GET)
    assert answers == [(200, [(b"content-length", b"2"), (b"x-a", b"b")], b"ok")] * 3
    assert b.connections == 1
    assert b.requests[0] == b"GET /x HTTP/1.1\r\nhost: example.com\r\n\r\n"


def test_chunked_and_informational_answers():
    b = Scripted([b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nTrailer: x\r\n\r\n",
                  b"HTTP/1.1 204 No Content\r\n\r\n"])
    assert [(s, body) for s, _, body in run(b, GET, GET)] == [(201, b"abcde"), (204, b"")]
    assert b.connections == 1


def test_read_until_close_and_http10_are_not_reused():
    b = Scripted([b"HTTP/1.0 200 OK\r\n\r\nuntil close", b"HTTP/1.1 200 OK\r\nConnection: close\r\n"
                  b"Content-Length: 1\r\n\r\n1", b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2"],
                 close_after={0, 1})
    assert [body for _, _, body in run(b, GET, GET, GET)] == [b"until close", b"1", b"2"]
    assert b.connections == 3


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",  # closed in the middle of the body
    b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX: a\x01b\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/2 200\r\n\r\n",
    b"garbage\r\n\r\n",
    b"",  # closed without a response
])
def test_malformed_answers_are_502(answer):
    [(status, _, body)] = run(Scripted([answer], close_after={0}), GET)
    assert status == 502, body


async def idle_connections_lost(pool: BackendPool) -> None:
    """Until the pool has seen the backend close every idle connection (5 s at most: a FIN on
    loopback arrives in well under a millisecond; nothing to wait on but the flag it sets)."""
    deadline = asyncio.get_running_loop().time() + 5
    while not all(c.lost for conns in pool.idle.values() for c in conns):
        assert asyncio.get_running_loop().time() < deadline, "the backend's close never reached the pool"
        await asyncio.sleep(0.005)


def test_idle_connection_the_pool_saw_closed_is_not_taken():
    """The backend closes after each answer but says keep-alive; once the pool has seen the
    close, the next GET goes on a fresh connection at once (no retry needed)."""
    b = Scripted([b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1",
                  b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2"], close_after={0, 1})
    answers = run(b, GET, GET, between=idle_connections_lost)
    assert [(s, body) for s, _, body in answers] == [(200, b"1"), (200, b"2")]
    assert b.connections == 2 and len(b.requests) == 2


#: The first answer, on a connection the backend keeps open.
FIRST = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1"


def test_reused_connection_closed_before_an_answer_is_retried_once_fresh():
    """The race the retry is for: the backend closes its idle connection just as the pool
    sends the next GET on it (here: it reads the GET and closes without a byte). The pool
    sends that GET once more on a fresh connection, and the client sees only the answer."""
    b = Scripted([FIRST, None, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2"])
    answers = run(b, GET, GET)
    assert [(s, body) for s, _, body in answers] == [(200, b"1"), (200, b"2")]
    assert b.connections == 2
    assert len(b.requests) == 3 and b.requests[1] == b.requests[2], "the second GET, sent again as it was"


def test_the_retry_is_only_once():
    """A fresh connection that closes without an answer too is the backend's failure: 502."""
    b = Scripted([FIRST, None, None])
    answers = run(b, GET, GET)
    assert [s for s, _, _ in answers] == [200, 502]
    assert b.connections == 2 and len(b.requests) == 3


def test_post_never_takes_a_reused_connection():
    b = Scripted([b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1",
                  b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2"])
    assert [body for _, _, body in run(b, GET, POST)] == [b"1", b"2"]
    assert b.connections == 2


def test_unreachable_backend_is_502():
    async def main():
        pool = BackendPool(asyncio.get_running_loop())
        return await pool.request(("127.0.0.1", 9), GET, [], b"")

    assert asyncio.run(main())[0] == 502
