"""The official openai SDK, sync and async, streaming and not, against Steward over real HTTP."""

from __future__ import annotations

import asyncio

import openai
import pytest

from tests.helpers import log_of, route_with_deployments


def test_sync_chat_completion(proxy, dev_upstream):
    client = openai.OpenAI(base_url=proxy.url, api_key=proxy.secret, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="dev-small", messages=[{"role": "user", "content": "hello from the sdk"}]
    )
    completion = raw.parse()
    assert completion.choices[0].message.content.startswith("Steward dev reply")
    assert completion.usage.prompt_tokens > 0
    assert raw.headers["x-steward-model-deployment"] == "d0"
    assert float(raw.headers["x-steward-overhead-ms"]) >= 0
    # The upstream saw the deployment's model and no Steward key.
    assert dev_upstream.stats()["last_request"]["model"] == "dev-small"
    row = log_of(raw.headers["x-request-id"])
    assert row.status == "ok" and row.http_status == 200 and row.endpoint == "chat.completions"
    assert row.completion_tokens == completion.usage.completion_tokens
    assert set(row.timings) >= {"authenticate", "resolve_prompt", "pre_filters", "admit", "call_upstream", "log"}
    assert row.attempts[0]["deployment"] == "d0" and row.attempts[0]["status"] == "ok"


def test_sync_streaming_without_usage_requested(proxy, dev_upstream):
    client = openai.OpenAI(base_url=proxy.url, api_key=proxy.secret, max_retries=0)
    stream = client.chat.completions.create(
        model="dev-small", messages=[{"role": "user", "content": "stream please"}], stream=True
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("Steward dev reply")
    # Steward asked the upstream for usage, and stripped it because the client did not ask.
    assert dev_upstream.stats()["last_request"]["stream_options"] == {"include_usage": True}
    assert all(c.usage is None for c in chunks)


def test_sync_streaming_with_usage_requested(proxy):
    client = openai.OpenAI(base_url=proxy.url, api_key=proxy.secret, max_retries=0)
    with client.chat.completions.with_streaming_response.create(
        model="dev-small",
        messages=[{"role": "user", "content": "count my tokens"}],
        stream=True,
        stream_options={"include_usage": True},
    ) as response:
        request_id = response.headers["x-request-id"]
        chunks = list(response.parse())
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(usage) == 1 and usage[0].completion_tokens > 0
    row = log_of(request_id)
    assert row.stream and row.status == "ok"
    assert row.completion_tokens == usage[0].completion_tokens and not row.usage_estimated


def test_async_chat_and_stream(proxy):
    async def run():
        client = openai.AsyncOpenAI(base_url=proxy.url, api_key=proxy.secret, max_retries=0)
        completion = await client.chat.completions.create(
            model="dev-small", messages=[{"role": "user", "content": "async hello"}]
        )
        stream = await client.chat.completions.create(
            model="dev-small", messages=[{"role": "user", "content": "async stream"}], stream=True
        )
        pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        # Concurrency on one client: ten at once.
        many = await asyncio.gather(
            *[
                client.chat.completions.create(model="dev-small", messages=[{"role": "user", "content": f"n{i}"}])
                for i in range(10)
            ]
        )
        await client.close()
        return completion, "".join(pieces), many

    completion, streamed, many = asyncio.run(run())
    assert completion.choices[0].message.content.startswith("Steward dev reply")
    assert streamed.startswith("Steward dev reply")
    assert all(m.choices[0].message.content.endswith(f"n{i}") for i, m in enumerate(many))


def test_completions_streaming_and_not(proxy):
    client = openai.OpenAI(base_url=proxy.url, api_key=proxy.secret, max_retries=0)
    completion = client.completions.create(model="dev-small", prompt="Say something")
    assert completion.choices[0].text.startswith("Steward dev reply")
    pieces = [
        c.choices[0].text for c in client.completions.create(model="dev-small", prompt="x", stream=True) if c.choices
    ]
    assert "".join(pieces).startswith("Steward dev reply")


def test_embeddings(proxy, organisation, dev_upstream):
    route_with_deployments(organisation, "dev-embed", [{"api_base": dev_upstream.url, "model": "dev-embed"}])
    client = openai.OpenAI(base_url=proxy.url, api_key=proxy.secret, max_retries=0)
    raw = client.embeddings.with_raw_response.create(model="dev-embed", input=["one", "two"])
    result = raw.parse()
    assert len(result.data) == 2 and len(result.data[0].embedding) > 0
    row = log_of(raw.headers["x-request-id"])
    assert row.endpoint == "embeddings" and row.prompt_tokens > 0


def test_models_lists_only_what_the_key_may_use(proxy, organisation, dev_upstream, api_key_factory):
    route_with_deployments(organisation, "dev-large", [{"api_base": dev_upstream.url, "model": "dev-large"}])
    _, limited = api_key_factory(allowed_models=["dev-large"])
    everything = openai.OpenAI(base_url=proxy.url, api_key=proxy.secret, max_retries=0).models.list()
    assert sorted(m.id for m in everything) == ["dev-large", "dev-small"]
    limited_client = openai.OpenAI(base_url=proxy.url, api_key=limited, max_retries=0)
    assert [m.id for m in limited_client.models.list()] == ["dev-large"]
    assert limited_client.models.retrieve("dev-large").id == "dev-large"
    with pytest.raises(openai.NotFoundError):
        limited_client.models.retrieve("dev-small")  # exists, but not for this key


def test_sdk_errors_are_typed(proxy):
    client = openai.OpenAI(base_url=proxy.url, api_key=proxy.secret, max_retries=0)
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert exc.value.body["code"] == "model_not_found"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=proxy.url, api_key="stw_wrong", max_retries=0).models.list()
