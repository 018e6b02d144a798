"""core.redis.abatch and the shared pipelined connection under it, against real Redis servers:
the suite's Redis, a password-protected one on a unix socket, and one that stops answering."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import threading
import time

import pytest
import redis
import redis.exceptions

from core import redis as core_redis
from core.management.commands.run_stack import embedded_redis_command
from core.redis import Command, Script, abatch, abatch_queue, aflushed, redis_client, redis_reset_clients

ECHO = Script("return {KEYS[1], ARGV[1]}")
BROKEN = Script("return redis.call('NOSUCHCOMMAND')")


@pytest.fixture(autouse=True)
def fresh_connections():
    redis_reset_clients()
    yield
    redis_reset_clients()


def test_a_batch_answers_each_call_in_order_and_reports_errors_in_place():
    key = "test:core:batch"
    redis_client().delete(key)
    results = asyncio.run(
        abatch([ECHO.call([key], ["one"]), Command("SET", key, "v", "EX", 30), BROKEN.call(), ECHO.call([key], [2])])
    )
    assert results[0] == [key.encode(), b"one"]
    assert results[1] == b"OK"
    assert isinstance(results[2], redis.exceptions.ResponseError) and "Unknown Redis command" in str(results[2])
    assert results[3] == [key.encode(), b"2"]
    assert redis_client().get(key) == b"v"
    assert 0 < redis_client().ttl(key) <= 30


def test_many_tasks_sharing_the_connection_each_get_their_own_replies():
    async def one(i: int):
        [reply] = await abatch([ECHO.call([f"k{i}"], [i])])
        return reply

    async def all_of_them():
        return await asyncio.gather(*(one(i) for i in range(500)))

    replies = asyncio.run(all_of_them())
    assert replies == [[f"k{i}".encode(), str(i).encode()] for i in range(500)]


def test_a_queued_batch_runs_before_anything_sent_after_it():
    """What the proxy relies on to answer before reading its settlement's reply."""
    key = "test:core:started"

    async def run():
        await abatch([Command("DEL", key)])
        pending = abatch_queue([Command("SET", key, "settled"), Command("INCR", key + ":n")])
        [seen] = await abatch([Command("GET", key)])
        return seen, await pending

    seen, replies = asyncio.run(run())
    assert seen == b"settled"
    assert replies[0] == b"OK" and replies[1] >= 1


def test_a_queued_batch_is_written_once_aflushed_returns():
    """What the proxy relies on before its answer goes out: another client (another process) sees
    the settlement once `aflushed` has returned, and not before the loop has turned."""
    key = "test:core:started-now"
    redis_client().delete(key)

    def seen_within(seconds: float):
        deadline = time.monotonic() + seconds
        seen = redis_client().get(key)  # blocks this loop: only a write already made can be seen
        while seen is None and time.monotonic() < deadline:
            seen = redis_client().get(key)
        return seen

    async def run():
        await abatch([Command("PING")])  # connected
        pending = abatch_queue([Command("SET", key, "settled")])
        before = seen_within(0.2)
        await aflushed()
        after = seen_within(2)
        return before, after, await pending

    before, after, replies = asyncio.run(run())
    assert before is None  # queued for the end of the turn, with whatever else the turn sends
    assert after == b"settled"
    assert replies == [b"OK"]


def test_commands_from_one_turn_of_the_loop_leave_in_one_write():
    writes = []

    async def one(i: int):
        [reply] = await abatch([ECHO.call([f"k{i}"], [i])])
        return reply

    async def run():
        await abatch([Command("PING")])
        transport = core_redis._mux().transport
        write = transport.write

        def counting(data):
            writes.append(data)
            write(data)

        transport.write = counting
        return await asyncio.gather(*(one(i) for i in range(50)))

    replies = asyncio.run(run())
    assert replies == [[f"k{i}".encode(), str(i).encode()] for i in range(50)]
    assert writes[0].count(b"EVALSHA") == 50
    # Only a resend in full may follow: another test process sharing this Redis can flush its scripts.
    assert all(w.startswith(b"*") and b"EVALSHA" not in w for w in writes[1:])


def test_arguments_redis_cannot_take_are_refused_before_sending():
    for bad in (True, None, ["list"]):
        with pytest.raises(TypeError, match="cannot send"):
            asyncio.run(abatch([Command("SET", "test:core:bad", bad)]))


def test_scripts_redis_has_forgotten_are_sent_again_in_full():
    async def both():
        single = await abatch([ECHO.call(["k"], ["a"])])
        redis_client().script_flush()
        pair = await abatch([ECHO.call(["k"], ["b"]), Command("PING"), ECHO.call(["k"], ["c"])])
        return single, pair

    redis_client().script_flush()
    single, pair = asyncio.run(both())
    assert single == [[b"k", b"a"]]
    assert pair == [[b"k", b"b"], b"PONG", [b"k", b"c"]]
    assert redis_client().script_exists(ECHO.sha) == [True]


def test_a_dropped_connection_fails_its_callers_and_the_next_call_reconnects():
    async def run():
        [first_id] = await abatch([Command("CLIENT", "ID")])
        # A blocking command (never sent this way by Steward) keeps a call in flight while the server
        # drops the connection under it.
        pending = asyncio.ensure_future(abatch([Command("BLPOP", "test:core:never", 5)]))
        deadline = time.monotonic() + 5
        while not any(int(c["id"]) == first_id and "b" in c["flags"] for c in redis_client().client_list()):
            assert time.monotonic() < deadline, "the BLPOP never reached the server"
            await asyncio.sleep(0.01)  # the loop sends it meanwhile
        assert redis_client().client_kill_filter(_id=first_id) == 1
        with pytest.raises(redis.exceptions.ConnectionError):
            await pending
        return first_id, await abatch([Command("PING"), Command("CLIENT", "ID")])

    first_id, (pong, second_id) = asyncio.run(run())
    assert pong == b"PONG" and second_id != first_id


@pytest.fixture
def private_redis(tmp_path):
    """A password-protected Redis on a unix socket (the embedded server `make run` uses)."""
    sock = tmp_path / "r.sock"
    proc = subprocess.Popen(
        [*embedded_redis_command(sock), "--requirepass", "s3cret"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 10
    while not sock.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.02)
    yield sock
    proc.terminate()
    proc.wait(10)


def test_unix_socket_password_and_database_from_the_url(private_redis, settings):
    settings.REDIS_URL = f"unix://:s3cret@{private_redis}?db=3"
    redis_reset_clients()
    asyncio.run(abatch([Command("SET", "where", "db3")]))
    direct = redis.Redis(unix_socket_path=str(private_redis), password="s3cret", db=3)
    assert direct.get("where") == b"db3"
    assert redis.Redis(unix_socket_path=str(private_redis), password="s3cret", db=0).get("where") is None

    settings.REDIS_URL = f"unix://:wrong@{private_redis}?db=3"
    redis_reset_clients()
    with pytest.raises(redis.exceptions.AuthenticationError):
        asyncio.run(abatch([Command("PING")]))


def test_a_redis_that_cannot_be_reached_is_a_connection_error(settings):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings.REDIS_URL = f"redis://127.0.0.1:{port}/0"
    redis_reset_clients()
    with pytest.raises(redis.exceptions.ConnectionError):
        asyncio.run(abatch([Command("PING")]))


@pytest.fixture
def silent_redis(settings):
    """A TCP server that accepts connections and never answers, in place of Redis."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted = []

    def serve():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(conn)

    threading.Thread(target=serve, daemon=True).start()
    settings.REDIS_URL = f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
    redis_reset_clients()
    yield accepted
    listener.close()
    for conn in accepted:
        conn.close()


@pytest.mark.parametrize("calls", [1, 2], ids=["single", "pipeline"])
def test_a_redis_that_stops_answering_is_a_redis_error_within_the_limit(silent_redis, monkeypatch, calls):
    monkeypatch.setattr(core_redis, "COMMAND_TIMEOUT_SECONDS", 0.3)
    started = time.monotonic()
    with pytest.raises(redis.exceptions.TimeoutError):
        asyncio.run(abatch([ECHO.call(["k"], ["x"])] * calls))
    assert 0.25 < time.monotonic() - started < 3
    assert silent_redis, "the client did reach the silent server"
