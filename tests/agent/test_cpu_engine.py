"""The CPU engine over its Unix socket, driven by the agent's engine client."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import msgspec
import pytest
from transformers import AutoTokenizer

from volt.agent.engine.client import EngineClient, EngineRejected, parse_load
from volt.testing.engine import start_cpu_engine


def chat(content: str = "Hello", **extra: object) -> bytes:
    return json.dumps({"model": "volt-tiny",
                       "messages": [{"role": "user", "content": content}], **extra}).encode()


async def tokens_generated(engine: EngineClient) -> float:
    text = await engine.metrics()
    total = next(row for row in text.splitlines() if row.startswith("vllm:generation_tokens_total"))
    return float(total.rsplit(" ", 1)[1])


async def test_completion_counts_tokens_with_the_models_tokenizer(
    engine: EngineClient, tiny_model: Path
) -> None:
    completion = await engine.complete("/v1/chat/completions", chat("count me", max_tokens=7))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "count me"}],
                                           add_generation_prompt=True, tokenize=False)
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == len(tokenizer(prompt)["input_ids"])
    assert completion.usage.completion_tokens <= 7
    choice = completion.choices[0]
    assert choice.finish_reason in {"length", "stop"}
    if choice.finish_reason == "length":
        assert completion.usage.completion_tokens == 7


async def test_streaming_yields_tokens_then_usage(engine: EngineClient) -> None:
    body = chat(max_tokens=12, stream=True, stream_options={"include_usage": True})
    groups = [batch.chunks async for batch in engine.stream("/v1/chat/completions", body)]
    chunks = [chunk for group in groups for chunk in group]
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta]
    text = "".join(d or "" for d in deltas)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices]
    finish = [reason for reason in finish if reason]
    usage = [c.usage for c in chunks if c.usage is not None]
    assert finish in (["length"], ["stop"])
    assert len(usage) == 1
    pieces = sum(1 for d in deltas if d)
    # Each token is at most one piece (some decode to nothing: special tokens,
    # partial UTF-8); a length stop means exactly the requested count.
    assert pieces <= usage[0].completion_tokens <= 12
    if finish == ["length"]:
        assert usage[0].completion_tokens == 12
    assert len(text) >= pieces


async def test_client_disconnect_stops_generation(engine: EngineClient) -> None:
    body = chat(max_tokens=3000, stream=True)
    async for _ in engine.stream("/v1/chat/completions", body):
        break  # closes the HTTP response: the client went away
    await asyncio.sleep(0.2)
    load = await engine.load()
    assert (load.running, load.waiting) == (0, 0)
    before = await tokens_generated(engine)
    await asyncio.sleep(0.3)
    assert await tokens_generated(engine) == before


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "invalid_request_error"),
        (b'{"model": "volt-tiny", "messages": []}', 400, "invalid_request_error"),
        (chat(model="gpt-4"), 404, "model_not_found"),
        (chat(max_tokens=100_000), 400, "context_length_exceeded"),
    ],
)
async def test_bad_requests_get_openai_errors(
    engine: EngineClient, body: bytes, status: int, code: str
) -> None:
    with pytest.raises(EngineRejected) as info:
        await engine.complete("/v1/chat/completions", body)
    assert (info.value.status, info.value.code) == (status, code)


async def test_concurrent_requests_share_batches(engine: EngineClient) -> None:
    results = await asyncio.gather(*(
        engine.complete("/v1/chat/completions", chat(f"request {i}", max_tokens=5))
        for i in range(16)
    ))
    assert all(r.usage is not None and r.usage.completion_tokens >= 1 for r in results)


async def test_instant_mode_returns_fixed_tokens(tiny_model: Path, tmp_path: Path) -> None:
    process = start_cpu_engine(tiny_model, tmp_path / "instant.sock", "instant")
    client = EngineClient(tmp_path / "instant.sock")
    try:
        first = await client.complete("/v1/chat/completions", chat(max_tokens=9))
        second = await client.complete("/v1/chat/completions", chat(max_tokens=9))
        assert first.choices[0].message is not None
        assert second.choices[0].message is not None
        assert first.choices[0].message.content == second.choices[0].message.content
        assert first.usage is not None
        assert first.usage.completion_tokens == 9
    finally:
        await client.close()
        process.terminate()
        process.wait(10)


def test_load_is_read_from_vllm_metric_names() -> None:
    text = (
        '# TYPE vllm:num_requests_running gauge\n'
        'vllm:num_requests_running{engine="0",model_name="m"} 3.0\n'
        'vllm:num_requests_running{engine="1",model_name="m"} 2.0\n'
        '# TYPE vllm:num_requests_waiting gauge\n'
        'vllm:num_requests_waiting{engine="0",model_name="m"} 4.0\n'
        '# TYPE vllm:kv_cache_usage_perc gauge\n'
        'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.5\n'
    )
    load = parse_load(text)
    assert (load.running, load.waiting, load.kv_cache_usage) == (5, 4, 0.5)


def test_pre_encoded_token_frames_equal_whole_chunks() -> None:
    from volt.agent.engine.shapes import ChatShape, TextShape, _json
    from volt.protocol.chat import ChatCompletionChunk, ChunkChoice, Delta
    from volt.protocol.common import CompletionUsage
    from volt.protocol.completions import Completion, CompletionChoice

    model = 'model "quoted"'
    usage = CompletionUsage(prompt_tokens=12, completion_tokens=3, total_tokens=15)
    chat_frames = ChatShape("chatcmpl-1", 1700000000, model, str).frames()
    text_frames = TextShape("cmpl-1", 1700000000, model, str, None, 1).frames()
    for piece in ["hello", " ", '"quotes" and \\ backslash', "ünï ✓", "\x00\n\t", "</script>"]:
        for with_usage in (None, usage):
            # The engine's frames without usage leave the field out (UNSET);
            # the API adds OpenAI's "usage": null where the client asked for usage.
            chunk_usage = msgspec.UNSET if with_usage is None else with_usage
            chat = _json.encode(ChatCompletionChunk(
                id="chatcmpl-1", created=1700000000, model=model,
                choices=[ChunkChoice(index=0, delta=Delta(content=piece))], usage=chunk_usage,
            ))
            assert chat_frames.token(piece, with_usage) == b"data: " + chat + b"\n\n"
            text = _json.encode(Completion(
                id="cmpl-1", created=1700000000, model=model,
                choices=[CompletionChoice(index=0, text=piece, finish_reason=None)],
                usage=chunk_usage,
            ))
            assert text_frames.token(piece, with_usage) == b"data: " + text + b"\n\n"


async def test_usage_counts_tokens_not_text_pieces(tiny_model: Path) -> None:
    """Held-back bytes flushed at the end are text, not an extra token."""
    from volt.agent.engine.backends import SamplingParams, TransformersBackend

    backend = TransformersBackend(tiny_model, "volt-tiny")
    try:
        prompt = backend.encode_chat([("user", "tokens, not pieces")])
        for _ in range(12):  # random tokens: some runs end mid-character
            events = [e async for e in backend.generate(
                f"r{_}", prompt, SamplingParams(max_new_tokens=5)
            )]
            tokens = sum(e.tokens for e in events)
            assert tokens <= 5
            if events[-1].finish_reason == "length":
                assert tokens == 5
            assert sum(len(e.pieces) for e in events) <= tokens
    finally:
        backend.close()


async def test_a_finished_stream_leaves_its_connection_for_reuse(engine: EngineClient) -> None:
    body = chat(max_tokens=3, stream=True)
    for _ in range(3):
        batches = [batch async for batch in engine.stream("/v1/chat/completions", body)]
        assert batches[-1].done
    assert len(engine._http._idle) == 1  # one connection, reused each time
    load = await engine.load()  # and the engine has already released them
    assert (load.running, load.waiting) == (0, 0)


@pytest.mark.parametrize(
    "raw",
    [
        b'data: {"choices":[{"index":0,"delta":{"content":"a"}}]}\n\n'
        b'data: {"choices":[{"index":0,"delta":{"content":"b"}}]}\n\ndata: [DONE]\n\n',
        # the general path: a comment, "data:" without a space, a two-line event
        b': keep-alive\n\ndata:{"choices":[{"index":0,"delta":{"content":"a"}}]}\n\n'
        b'event: x\ndata: {"choices":[{"index":0,"delta":{"content":"b"}}]}\n\ndata: [DONE]\n\n',
    ],
    ids=["fast", "general"],
)
def test_stream_events_parse_alike_on_both_paths(raw: bytes) -> None:
    from volt.agent.engine.client import parse_block

    chunks, done = parse_block(raw.rstrip(b"\n"))
    assert done
    assert [c.choices[0].delta.content for c in chunks if c.choices[0].delta] == ["a", "b"]


def test_an_error_event_mid_stream_is_an_engine_rejection() -> None:
    from volt.agent.engine.client import parse_block

    raw = (b'data: {"choices":[{"index":0,"delta":{"content":"a"}}]}\n\n'
           b'data: {"error":{"message":"boom","type":"server_error"}}')
    with pytest.raises(EngineRejected) as info:
        parse_block(raw)
    assert info.value.message == "boom"


async def test_a_repeated_prompt_reports_its_cached_tokens(engine: EngineClient) -> None:
    """transformers' continuous batching reuses cached prefix blocks; the engine
    reports them as vLLM does (``prompt_tokens_details.cached_tokens``)."""
    body = chat("metro tier pod " * 40, max_tokens=2)
    first = await engine.complete("/v1/chat/completions", body)
    second = await engine.complete("/v1/chat/completions", body)
    assert first.usage is not None
    assert second.usage is not None
    details = second.usage.prompt_tokens_details
    assert details is not None
    assert 0 < details.cached_tokens < second.usage.prompt_tokens
    streamed = [batch.chunks async for batch in engine.stream("/v1/chat/completions", chat(
        "metro tier pod " * 40, max_tokens=2, stream=True,
        stream_options={"include_usage": True},
    ))]
    usage = [c.usage for group in streamed for c in group if c.usage is not None][-1]
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == details.cached_tokens


async def test_echoed_prompt_logprobs_agree_with_generation(tiny_model: Path) -> None:
    """The prompt's logprobs (``echo``) come from a separate forward pass; scoring
    a prompt that ends with a greedy completion must give that completion's
    tokens the logprobs and alternatives generation gave them."""
    from volt.agent.engine.backends import SamplingParams, TransformersBackend

    backend = TransformersBackend(tiny_model, "volt-tiny")
    try:
        prompt = backend.encode_text("Once upon a time")
        events = [e async for e in backend.generate(
            "scored", prompt, SamplingParams(max_new_tokens=6, temperature=0, top_logprobs=3))]
        generated = [entry for event in events for entry in event.logprobs]
        assert len(generated) == 6
        scored = backend.prompt_logprobs(prompt + [e.token_id for e in generated], 3)
        assert (scored[0].logprob, scored[0].top) == (None, None)  # nothing before it
        assert [e.token_id for e in scored] == prompt + [e.token_id for e in generated]
        for mine, theirs in zip(scored[len(prompt):], generated, strict=True):
            assert mine.logprob == pytest.approx(theirs.logprob, abs=1e-4)
            assert [i for i, _ in mine.top or ()] == [i for i, _ in theirs.top or ()]
    finally:
        backend.close()


def test_a_token_that_is_part_of_a_character_keeps_its_real_bytes(tiny_model: Path) -> None:
    from volt.agent.engine.backends import _Tokenizer, logprob_text

    tokenizer = _Tokenizer(tiny_model)
    ids = tokenizer.encode("🙂 ünï")
    raws = [tokenizer.token_bytes(i) for i in ids]
    assert b"".join(raws) == "🙂 ünï".encode()
    partial = [raw for raw in raws if not _is_utf8(raw)]
    assert partial, "the emoji should take several byte tokens in this vocabulary"
    for raw in partial:
        assert "\ufffd" not in logprob_text(raw)
        assert logprob_text(raw).startswith("\\x")
    # No two tokens of the vocabulary look alike, so no list of alternatives
    # can name one twice.
    texts = [logprob_text(tokenizer.token_bytes(i)) for i in range(tokenizer.vocab_size())]
    assert len(set(texts)) == len(texts)


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode()
    except UnicodeDecodeError:
        return False
    return True


def test_the_paced_engine_steps_every_stream_together_as_a_gpu_batch_does(
        tiny_model: Path) -> None:
    """``batch`` (the default): requests that arrive a few ms apart get their
    first tokens from the same decoding step, and every later token too (the
    steps are one grid for all streams); ``stream`` keeps each on its own clock."""
    from volt.agent.engine.backends import PacedBackend
    from volt.agent.engine.tiny_model import MODEL_ID

    batch = PacedBackend(tiny_model, MODEL_ID, ttft_s=0.1, itl_s=0.02)
    stream = PacedBackend(tiny_model, MODEL_ID, ttft_s=0.1, itl_s=0.02, schedule="stream")
    assert batch.first_token_at(10.003) == batch.first_token_at(10.011) == pytest.approx(10.12)
    assert batch.first_token_at(10.003) >= 10.003 + 0.1  # never sooner than its TTFT
    assert stream.first_token_at(10.003) == pytest.approx(10.103)
    assert stream.first_token_at(10.011) == pytest.approx(10.111)


async def test_the_paced_engine_sends_each_token_on_its_own_schedule(tiny_model: Path,
                                                                     tmp_path: Path) -> None:
    """``paced``: the first token no sooner than TTFT after the request, then one
    per ITL, each in its own event (what a GPU's decoding steps look like)."""
    import time

    from volt.testing.engine import start_cpu_engine

    socket = tmp_path / "paced.sock"
    process = start_cpu_engine(tiny_model, socket, mode="paced")  # 100 ms, then 20 ms
    client = EngineClient(socket)
    try:
        started = time.monotonic()
        arrivals = []
        async for batch in client.stream("/v1/chat/completions",
                                         chat(max_tokens=10, stream=True)):
            contents = [c for c in batch.chunks if c.choices and c.choices[0].delta
                        and c.choices[0].delta.content]
            if contents:
                arrivals.append((time.monotonic() - started, len(contents)))
        # Lower bounds only (a late wake-up may bunch tokens, never hurry them).
        assert arrivals[0][0] >= 0.1
        assert arrivals[-1][0] >= 0.1 + 9 * 0.02
        assert sum(count for _, count in arrivals) == 10
        assert len(arrivals) >= 5  # spread out, not one burst
    finally:
        await client.close()
        process.terminate()
        process.wait(10)
