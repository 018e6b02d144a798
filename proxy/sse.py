"""The stream relay: a streamed answer's events on their way from the upstream to the client.

It works on bytes only (no I/O): the pipeline hands it each batch of complete upstream events
(`upstream.SSEStream` splits them on blank lines) and writes what it gives back. On the way it
- passes plain content chunks on untouched and keeps their data, parsed only if someone asks for
  the text (`content()`: a stream without usage, a stored body);
- reads the usage, strips it when the client did not ask for it (Steward always asks the upstream
  for it, `stream_options.include_usage`), drops upstream comments and the upstream's [DONE];
- turns an upstream error event into TransientUpstreamError, after the events ahead of it;
- keeps the events as sent for the response cache (`cache_value`, `cached_stream_read`).
"""

from __future__ import annotations

import orjson

from core.errors import TransientUpstreamError
from proxy.settlement import Usage

KEEPALIVE = b": keep-alive\n\n"
DONE = b"data: [DONE]\n\n"
# A cached stream: this line, the usage as JSON on one line, then the events exactly as the client got them.
STREAM_CACHE_FORMAT = b"steward-sse-1\n"


class CacheDamaged(Exception):
    """A value under a stream's cache key that this module did not write."""


def cache_value(usage: Usage | None, events: bytes) -> bytes:
    return b"".join([STREAM_CACHE_FORMAT, orjson.dumps(usage), b"\n", events])


def cached_stream_read(value: bytes) -> tuple[Usage | None, bytes]:
    """The usage and the events (as the client got them, [DONE] excluded) of a cached stream."""
    if not value.startswith(STREAM_CACHE_FORMAT):
        raise CacheDamaged()
    usage_line, _, events = value[len(STREAM_CACHE_FORMAT) :].partition(b"\n")
    try:
        usage = Usage.from_record(orjson.loads(usage_line))
    except orjson.JSONDecodeError:
        usage = None
    return usage, events


class StreamRelay:
    """One stream's relay (see the module's docstring); `held` are events kept back for the write
    that ends the response, `usage` the upstream's last usage report."""

    __slots__ = ("chat", "client_usage", "contents", "held", "parsed", "pieces", "sent", "usage")

    def __init__(self, *, chat: bool, client_usage: bool, cache: bool):
        self.chat = chat
        self.client_usage = client_usage
        self.contents: list[bytes] = []  # the data of content events, parsed only when needed
        self.parsed = 0  # how many of `contents` are in `pieces`
        self.pieces: list[str] = []
        self.held = b""
        self.sent: list[bytes] | None = [] if cache else None  # everything the client got, for the cache
        self.usage: Usage | None = None

    def relay(self, batch: list[bytes], hold: bool = False) -> bytes | None:
        """The bytes to write now for a batch of upstream events, or None when there is nothing to
        write yet (`hold`: keep them for the write that ends the response, as once anything is held).

        An upstream error event raises TransientUpstreamError; the events ahead of it are held, so
        they reach the client ahead of the error event that ends the stream."""
        out = []
        contents = self.contents
        try:
            for event in batch:
                # A plain content chunk (nearly every event) is passed on untouched and read later if
                # at all; anything else (usage, errors, comments, [DONE]) goes through `_event_out`.
                if event[:7] == b"data: {":
                    data = event[6:]
                    if b'"usage"' not in data and b'"error"' not in data:
                        contents.append(data)
                        out.append(event)
                        out.append(b"\n\n")
                        continue
                event = self._event_out(event)
                if event is not None:
                    out.append(event)
                    out.append(b"\n\n")
        except BaseException:
            hold = True
            raise
        finally:
            if out:
                if self.sent is not None:
                    self.sent.extend(out)
                if hold or self.held:
                    self.held += b"".join(out)
                    out = None
        return b"".join(out) if out else None

    def _event_out(self, event: bytes) -> bytes | None:
        """The event as the client gets it, or None when it is not for the client."""
        if event[:1] == b":":
            return None  # upstream comments (its own keep-alives) are not the client's business
        data = event[6:] if event.startswith(b"data: ") else event[5:] if event.startswith(b"data:") else None
        if data is None:
            return event
        if b'"usage"' not in data and b'"error"' not in data:
            # A plain content chunk (or [DONE]): passed on untouched, read later if at all.
            if data.strip() == b"[DONE]":
                return None
            self.contents.append(data)
            return event
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return event
        if isinstance(chunk, dict):
            if chunk.get("error"):
                message = chunk["error"].get("message") if isinstance(chunk["error"], dict) else str(chunk["error"])
                raise TransientUpstreamError(f"Upstream error mid-stream: {message}")
            if chunk.get("choices"):
                self.contents.append(data)
            if chunk.get("usage"):
                self.usage = Usage.from_response(chunk)
                if not self.client_usage:
                    if not chunk.get("choices"):
                        return None
                    del chunk["usage"]
                    event = b"data: " + orjson.dumps(chunk)
        return event

    def content(self) -> list[str]:
        """The text pieces streamed so far, one per content chunk. Parsed here rather than as they
        pass: only a stream without usage (cancelled, or an upstream that reports none) or a stored
        body needs them, and parsing every chunk on the way costs the hot path."""
        contents = self.contents
        if self.parsed < len(contents):
            pieces = self.pieces
            chat = self.chat
            for raw in contents[self.parsed :]:
                try:
                    chunk = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    continue
                if not isinstance(chunk, dict):
                    continue
                for choice in chunk.get("choices") or ():
                    if not isinstance(choice, dict):
                        continue
                    piece = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
                    if piece and isinstance(piece, str):
                        pieces.append(piece)
            self.parsed = len(contents)
        return self.pieces

    def tokens(self) -> int:
        """The tokens streamed: the upstream's count when it gave one, else one per content piece."""
        usage = self.usage
        if usage is not None:
            return usage.prompt_tokens + usage.completion_tokens
        return len(self.content())
