"""A streamed answer under a safety policy: what reaches the client, and when.

The relay (`proxy.sse`) still reads the upstream's events (usage, errors) and keeps them for the
response cache as the upstream sent them; its output then passes through a `StreamFilter`, which
reads each content chunk's text, restores the request's placeholders in it (`StreamRestorer`) and
writes the client's chunks itself, in the policy's stream mode:

- `pass`: no output filter, only placeholders to restore: each piece goes out as it comes;
- `observe`: the same, and the whole text is checked at the end and recorded;
- `window`: the text is checked every `window_chars / 2` new characters (all of it so far, so the
  verdicts are those of the same answer not streamed) and only what lies more than `window_chars`
  behind the newest text is released, redacted where the policy redacts and never cutting a
  finding's span; a block ends the stream with `finish_reason: "content_filter"` and nothing else;
- `buffer`: nothing goes out until the whole text passed; then it is released as chunks.

Chunks with a finish reason or usage, and anything after them, wait for `finish`; so does a
chunk other than text (tool calls), which keeps its place behind the text.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable

import orjson

from safety.engine import StageResult
from safety.filters.base import Action

_PIECES = re.compile(r"\s*\S+\s*")
PIECE_WORDS = 4  # words per chunk of a released buffered text
BLOCKING = (Action.BLOCK, Action.HOLD)


def text_pieces(text: str) -> list[str]:
    """A released text cut into chunks of a few words (whitespace kept with them)."""
    words = _PIECES.findall(text)
    if not words:
        return [text] if text else []
    if "".join(words) != text:  # leading/trailing whitespace only: keep it exact
        return [text]
    return ["".join(words[i : i + PIECE_WORDS]) for i in range(0, len(words), PIECE_WORDS)]


def redacted_prefix(text: str, stage: StageResult, upto: int) -> str:
    """`text[:upto]` with the stage's redactions whose spans end by `upto` applied."""
    by_original = {original: placeholder for placeholder, original in stage.mapping.items()}
    spans = sorted((f["start"], f["end"]) for f in stage.findings if f["action"] == "redact" and f["end"] > f["start"])
    out, cursor = [], 0
    for start, end in spans:
        if end > upto:
            break
        if start < cursor:
            continue
        out.append(text[cursor:start])
        out.append(by_original.get(text[start:end], "[REDACTED]"))
        cursor = end
    out.append(text[cursor:upto])
    return "".join(out)


class StreamFilter:
    """One stream's filtering (see the module docstring). `stage` is the last check's result."""

    def __init__(
        self,
        *,
        mode: str,
        chat: bool,
        model: str,
        window_chars: int,
        check: Callable[[str], Awaitable[StageResult]] | None,
        mapping: dict[str, str],
    ):
        self.mode = mode
        self.chat = chat
        self.model = model
        self.window_chars = window_chars
        self.check = check
        self.restorer = None
        if mapping:
            from safety.redaction import StreamRestorer

            self.restorer = StreamRestorer(mapping)
        self.template: dict | None = None
        self._base: dict | None = None  # the template without choices and usage
        self.head: list[bytes] = []  # a role chunk not yet released (buffer, window)
        self.tail: list[dict | bytes] = []  # finish / usage / non-text chunks, for `finish`
        self.text = ""  # the whole text so far, restored
        self.released = 0  # characters of `text` released (window)
        self.sent = ""  # what the client got of it (redacted where the policy redacts)
        self.checked = 0  # len(text) at the last check
        self.checks = 0
        self.stage: StageResult | None = None
        self.ended = False  # a violation ended the stream (window)
        self.started_output = False

    # --- chunks ---------------------------------------------------------------------------------

    def _chunk(self, content: str | None = None, finish: str | None = None, **extra) -> bytes:
        base = self._base
        if base is None:
            template = self.template or {
                "id": "chatcmpl-steward" if self.chat else "cmpl-steward",
                "object": "chat.completion.chunk" if self.chat else "text_completion",
                "created": int(time.time()),
                "model": self.model,
            }
            base = {k: v for k, v in template.items() if k not in ("choices", "usage")}
            if self.template is not None:
                self._base = base  # the upstream's first chunk, read once for every chunk written
        chunk = dict(base)
        if self.chat:
            choice = {"index": 0, "delta": {} if content is None else {"content": content}, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": content or "", "finish_reason": finish}
        chunk["choices"] = [choice]
        chunk.update(extra)
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    def _text_out(self, text: str) -> list[bytes]:
        if not text:
            return []
        out = []
        if self.head:
            out.extend(self.head)
            self.head = []
        self.started_output = True
        out.extend(self._chunk(piece) for piece in text_pieces(text))
        return out

    def _piece_of(self, chunk: dict) -> tuple[str | None, bool]:
        """The chunk's text (choice 0), and whether the chunk carries nothing else for the client."""
        choices = chunk.get("choices") or []
        if not choices or not isinstance(choices[0], dict):
            return None, False
        choice = choices[0]
        if self.chat:
            delta = choice.get("delta") or {}
            piece = delta.get("content")
            bare = set(delta) <= {"content", "role"} and not choice.get("finish_reason") and len(choices) == 1
        else:
            piece = choice.get("text")
            bare = not choice.get("finish_reason") and len(choices) == 1
        return (piece if isinstance(piece, str) else None), bare and "usage" not in chunk

    # --- feeding ---------------------------------------------------------------------------------

    async def feed(self, out: bytes) -> bytes | None:
        """The relay's output for one batch in; what to write to the client now out."""
        if self.ended:
            return None
        emitted: list[bytes] = []
        for event in out.split(b"\n\n"):
            if not event:
                continue
            if not event.startswith(b"data: {"):
                self.tail.append(event + b"\n\n")
                continue
            chunk = orjson.loads(event[6:])
            if self.template is None:
                self.template = chunk
            piece, bare = self._piece_of(chunk)
            if self.tail or not bare:
                # A finish, usage or non-text chunk, and everything after: held for `finish`.
                if piece:
                    self._take(piece, emitted)
                    choice = chunk["choices"][0]
                    if self.chat:
                        choice["delta"] = {k: v for k, v in (choice.get("delta") or {}).items() if k != "content"}
                    else:
                        choice["text"] = ""
                self.tail.append(chunk)
                continue
            if piece is None or piece == "":
                if self.mode in ("pass", "observe") or self.started_output:
                    emitted.append(event + b"\n\n")
                else:
                    self.head.append(event + b"\n\n")
                continue
            self._take(piece, emitted)
        if self.mode == "window" and len(self.text) - self.checked >= max(1, self.window_chars // 2):
            emitted.extend(await self._window_check(final=False))
        return b"".join(emitted) if emitted else None

    def _take(self, piece: str, emitted: list[bytes]) -> None:
        if self.restorer is not None:
            piece = self.restorer.feed(piece)
        self.text += piece
        if self.mode in ("pass", "observe") and piece:
            self.started_output = True
            self.sent += piece
            emitted.append(self._chunk(piece))

    async def _run_check(self) -> StageResult:
        self.checks += 1
        self.checked = len(self.text)
        self.stage = await self.check(self.text)
        return self.stage

    async def _window_check(self, *, final: bool) -> list[bytes]:
        stage = await self._run_check()
        if stage.action in BLOCKING or stage.failed:
            return self._end_blocked()
        text = self.text
        safe = len(text) if final else max(0, len(text) - self.window_chars)
        for finding in stage.findings:
            if finding["start"] < safe < finding["end"]:
                safe = finding["start"]
        if safe <= self.released:
            return []
        if stage.action == Action.REDACT and stage.mapping:
            released = redacted_prefix(text, stage, safe)
        elif final and stage.changed:
            released = stage.text  # a rewrite (citations) of the whole text
        else:
            released = text[:safe]
        self.released = safe
        new = released[len(self.sent) :]
        self.sent = released
        return self._text_out(new)

    def _end_blocked(self) -> list[bytes]:
        """A violation ends the stream: with a content_filter chunk once text went out; before that
        the caller answers with an error instead (`started_output` tells)."""
        self.ended = True
        return [self._chunk(finish="content_filter")] if self.started_output else []

    # --- the end ---------------------------------------------------------------------------------

    def _tail_out(self, stage: StageResult | None, policy_name: str) -> list[bytes]:
        out = []
        for item in self.tail:
            if isinstance(item, bytes):
                out.append(item)
                continue
            choices = item.get("choices") or []
            if stage is not None and stage.extra and choices and choices[0].get("finish_reason"):
                item = {**item, "steward": {**stage.extra, "policy": policy_name}}
            out.append(b"data: " + orjson.dumps(item) + b"\n\n")
        return out

    async def finish(self, policy_name: str) -> tuple[StageResult | None, bytes | None]:
        """The stream's end: the final check (none in `pass` mode) and the bytes that end the
        stream when it may end normally. For a block or a hold the bytes are None: the caller
        decides (an error if nothing was sent, else a `content_filter` end; or the hold's answer)."""
        if self.ended:
            return self.stage, None
        if self.restorer is not None:
            rest = self.restorer.flush()
            self.text += rest
            if self.mode in ("pass", "observe") and rest:
                self.sent += rest
                return await self._finish_streamed(policy_name, [self._chunk(rest)])
        if self.mode in ("pass", "observe"):
            return await self._finish_streamed(policy_name, [])
        if self.mode == "window":
            out = await self._window_check(final=True)
            if self.ended:
                return self.stage, None
            return self.stage, b"".join(out + self._tail_out(self.stage, policy_name))
        stage = await self._run_check()
        if stage.action in BLOCKING or stage.failed:
            return stage, None
        self.sent = stage.text
        return stage, b"".join(self._text_out(stage.text) + self.head + self._tail_out(stage, policy_name))

    async def _finish_streamed(self, policy_name: str, out: list[bytes]) -> tuple[StageResult | None, bytes | None]:
        stage = None
        if self.mode == "observe":
            stage = await self._run_check()
            if stage.action in BLOCKING or stage.failed:
                # Observed too late to stop what went out: the rest (finish, usage) is withheld.
                self.ended = True
                return stage, b"".join([*out, self._chunk(finish="content_filter")])
        return stage, b"".join(out + self._tail_out(stage, policy_name))

    def blocked_end(self) -> bytes:
        """The bytes that end a stream whose output was blocked once something was sent."""
        return self._chunk(finish="content_filter")
