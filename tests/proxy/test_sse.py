"""The stream relay on bytes: what the client gets for what the upstream sends (proxy.sse), with the
upstream's byte stream cut anywhere (proxy.upstream.SSEStream splits it into events)."""

from __future__ import annotations

import asyncio
import itertools

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import TransientUpstreamError
from proxy import sse, upstream
from proxy.settlement import Usage


def chunk(text: str, *, chat: bool = True) -> bytes:
    choice = {"index": 0, "delta": {"content": text}} if chat else {"index": 0, "text": text}
    return b"data: " + orjson.dumps({"id": "c1", "object": "chat.completion.chunk", "choices": [choice]})


USAGE = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
USAGE_ONLY = b"data: " + orjson.dumps({"id": "c1", "choices": [], "usage": USAGE})


class ChunkedBody:
    """The part of httpclient.Response that SSEStream reads: the body in the given pieces, one per read."""

    def __init__(self, pieces: list[bytes]):
        self.pieces = list(pieces)

    @property
    def at_eof(self) -> bool:
        return not self.pieces

    def read_nowait(self) -> bytes:
        return b""

    async def read(self, timeout: float | None = None) -> bytes:
        return self.pieces.pop(0) if self.pieces else b""

    def release(self) -> None:
        pass


def relay_all(pieces: list[bytes], *, client_usage: bool, cache: bool = False) -> tuple[sse.StreamRelay, list[bytes]]:
    """Run a byte stream cut into `pieces` through SSEStream and the relay; the writes the client gets."""
    relay = sse.StreamRelay(chat=True, client_usage=client_usage, cache=cache)
    stream = upstream.SSEStream(ChunkedBody(pieces), "d0", read_timeout=1.0)

    async def run() -> list[bytes]:
        writes = []
        async for batch in stream.batches():
            out = relay.relay(batch, stream.finished)
            if out is not None:
                writes.append(out)
        return writes

    writes = asyncio.run(run())
    if relay.held:
        writes.append(relay.held)
    return relay, writes


def test_content_events_pass_untouched_and_their_text_is_read_when_asked():
    relay = sse.StreamRelay(chat=True, client_usage=False, cache=False)
    events = [chunk("Hel"), chunk("lo")]
    assert relay.relay(events) == events[0] + b"\n\n" + events[1] + b"\n\n"
    assert relay.usage is None
    assert relay.content() == ["Hel", "lo"]
    assert relay.tokens() == 2  # one per piece without the upstream's count


def test_completions_text_is_read_from_choices_text():
    relay = sse.StreamRelay(chat=False, client_usage=False, cache=False)
    relay.relay([chunk("abc", chat=False), chunk("de", chat=False)])
    assert relay.content() == ["abc", "de"]


def test_comments_and_the_upstreams_done_are_not_the_clients():
    relay = sse.StreamRelay(chat=True, client_usage=False, cache=False)
    assert relay.relay([b": keep-alive", b"data: [DONE]"]) is None
    assert relay.relay([b": ping", chunk("x"), b"data:[DONE]"]) == chunk("x") + b"\n\n"


def test_a_usage_only_event_is_dropped_unless_the_client_asked_for_usage():
    stripped = sse.StreamRelay(chat=True, client_usage=False, cache=False)
    assert stripped.relay([chunk("a"), USAGE_ONLY]) == chunk("a") + b"\n\n"
    assert stripped.usage == Usage(7, 3)
    assert stripped.tokens() == 10

    kept = sse.StreamRelay(chat=True, client_usage=True, cache=False)
    assert kept.relay([chunk("a"), USAGE_ONLY]) == chunk("a") + b"\n\n" + USAGE_ONLY + b"\n\n"
    assert kept.usage == Usage(7, 3)


def test_usage_riding_on_a_content_chunk_is_cut_from_it_unless_asked_for():
    event = b"data: " + orjson.dumps(
        {
            "choices": [{"index": 0, "delta": {"content": "z"}}],
            "usage": {**USAGE, "prompt_tokens_details": {"cached_tokens": 2}},
        }
    )
    relay = sse.StreamRelay(chat=True, client_usage=False, cache=False)
    out = relay.relay([event])
    assert orjson.loads(out.removeprefix(b"data: ").removesuffix(b"\n\n")) == {
        "choices": [{"index": 0, "delta": {"content": "z"}}]
    }
    assert relay.usage == Usage(7, 3, cached_tokens=2)
    assert relay.content() == ["z"]

    asked = sse.StreamRelay(chat=True, client_usage=True, cache=False)
    assert asked.relay([event]) == event + b"\n\n"


def test_an_upstream_error_event_raises_after_holding_the_events_ahead_of_it():
    relay = sse.StreamRelay(chat=True, client_usage=False, cache=False)
    error = b'data: {"error": {"message": "overloaded"}}'
    with pytest.raises(TransientUpstreamError, match="overloaded"):
        relay.relay([chunk("a"), error, chunk("never")])
    assert relay.held == chunk("a") + b"\n\n"  # sent ahead of the error event that ends the stream


def test_held_events_stay_held_so_the_order_is_kept():
    relay = sse.StreamRelay(chat=True, client_usage=False, cache=True)
    assert relay.relay([chunk("a")], hold=True) is None
    assert relay.relay([chunk("b")]) is None  # behind held events: held too
    assert relay.held == chunk("a") + b"\n\n" + chunk("b") + b"\n\n"
    assert b"".join(relay.sent) == relay.held


def test_the_stream_cache_format_round_trips_and_refuses_what_it_did_not_write():
    events = chunk("a") + b"\n\n" + USAGE_ONLY + b"\n\n"
    value = sse.cache_value(Usage(7, 3, estimated=True), events)
    assert value.startswith(b"steward-sse-1\n")
    assert sse.cached_stream_read(value) == (Usage(7, 3, estimated=True), events)
    assert sse.cached_stream_read(sse.cache_value(None, events)) == (None, events)
    with pytest.raises(sse.CacheDamaged):
        sse.cached_stream_read(b'{"choices": []}')


def test_a_character_cut_by_the_network_reaches_the_client_whole():
    event = chunk("caf\u00e9 \U0001f600")
    raw = event + b"\n\n" + USAGE_ONLY + b"\n\n" + b"data: [DONE]\n\n"
    cut = event.index("\U0001f600".encode()) + 2  # inside the emoji's four bytes
    relay, writes = relay_all([raw[:cut], raw[cut:]], client_usage=False)
    assert writes == [event + b"\n\n"]
    assert relay.content() == ["caf\u00e9 \U0001f600"]
    assert relay.usage == Usage(7, 3)


def test_events_cut_between_reads_are_put_together_and_crlf_is_understood():
    raw = (chunk("a") + b"\r\n\r\n" + b": comment\r\n\r\n" + chunk("b") + b"\r\n\r\n").replace(b"\r\n", b"\n", 0)
    relay, writes = relay_all([raw[:5], raw[5:31], raw[31:]], client_usage=False)
    assert b"".join(writes) == chunk("a") + b"\n\n" + chunk("b") + b"\n\n"
    assert relay.content() == ["a", "b"]


texts = st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=8)


@settings(max_examples=150, deadline=None)
@given(
    texts=texts,
    comments=st.lists(st.booleans(), min_size=8, max_size=8),
    usage=st.booleans(),
    client_usage=st.booleans(),
    crlf=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
)
def test_the_client_gets_the_same_events_however_the_upstream_bytes_are_cut(
    texts, comments, usage, client_usage, crlf, cuts
):
    events = []
    expected = []
    for text, comment in zip(texts, comments, strict=False):
        if comment:
            events.append(b": keep-alive")
        events.append(chunk(text))
        expected.append(chunk(text))
    if usage:
        events.append(USAGE_ONLY)
        if client_usage:
            expected.append(USAGE_ONLY)
    events.append(b"data: [DONE]")
    raw = b"".join(event + b"\n\n" for event in events)
    if crlf:
        raw = raw.replace(b"\n", b"\r\n")
    points = sorted({cut % (len(raw) + 1) for cut in cuts} | {0, len(raw)})
    pieces = [raw[a:b] for a, b in itertools.pairwise(points) if b > a]

    relay, writes = relay_all(pieces, client_usage=client_usage, cache=True)

    assert b"".join(writes) == b"".join(event + b"\n\n" for event in expected)
    for write in writes:
        write.decode()  # never a character cut in two
    assert "".join(relay.content()) == "".join(texts)
    assert relay.usage == (Usage(7, 3) if usage else None)
    assert b"".join(relay.sent) == b"".join(writes)  # the cache keeps what the client got
