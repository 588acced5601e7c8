"""The OpenAI-compatible judge client: against a real `transformers serve` on 127.0.0.1 serving a tiny LLaVA,
and against a deliberately failing local endpoint (500s, refused connections, time-outs, 400s)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import ScriptedServer, free_port
from unmirage.judges import ChatRequest, JudgeItem, OpenAIBackend, get_judge, run_judge
from unmirage.judges.llm import parse_harm, parse_relevance
from unmirage.models import save_tiny


def backend(url: str, **kwargs) -> OpenAIBackend:
    options = {"timeout": 5.0, "max_retries": 2, "backoff": 0.01, "concurrency": 1, **kwargs}
    return OpenAIBackend(url, "served-name", **options)


def test_500s_are_retried_then_succeed() -> None:
    with ScriptedServer([(500, 0), (503, 0)]) as server:
        reply = backend(server.url).chat_one(ChatRequest(text="hi", max_tokens=5))
    assert reply.text == "Relevant: fine" and reply.error is None and reply.attempts == 3
    body = server.bodies[0]
    assert body["model"] == "served-name" and body["max_tokens"] == 5
    assert "logprobs" not in body and "response_format" not in body


def test_persistent_500_becomes_an_error_record_after_all_retries() -> None:
    with ScriptedServer([(500, 0)] * 10) as server:
        reply = backend(server.url, max_retries=3).chat_one(ChatRequest(text="hi"))
    assert reply.text is None and reply.attempts == 4 and len(server.bodies) == 4
    assert reply.error.startswith("HTTP 500") and "after 4 attempts" in reply.error


def test_client_errors_are_not_retried() -> None:
    with ScriptedServer([(400, 0)] * 3) as server:
        reply = backend(server.url).chat_one(ChatRequest(text="hi"))
    assert reply.error.startswith("HTTP 400") and reply.attempts == 1 and len(server.bodies) == 1


def test_refused_connection_is_an_error_record() -> None:
    reply = backend(f"http://127.0.0.1:{free_port()}/v1", max_retries=1).chat_one(ChatRequest(text="hi"))
    assert reply.text is None and reply.error.startswith("connection failed") and reply.attempts == 2


def test_timeout_is_retried_and_recorded() -> None:
    # the server answers only after 1 s: without the 0.2 s timeout both attempts would succeed
    with ScriptedServer([(200, 1.0), (200, 1.0)]) as server:
        reply = backend(server.url, timeout=0.2, max_retries=1).chat_one(ChatRequest(text="hi"))
    assert reply.text is None and reply.error.startswith("timed out after 0.2 s") and reply.attempts == 2


def test_failed_items_are_retried_by_a_rerun(tmp_path) -> None:
    from unmirage.judges import JudgeCache

    items = [JudgeItem(id=str(i), answer=f"answer {i}", question="q") for i in range(3)]
    with ScriptedServer([(200, 0), (500, 0), (200, 0)], reply="Irrelevant: vague") as server:
        judge = get_judge("llm-relevance", backend=backend(server.url, max_retries=0))
        with JudgeCache(tmp_path / "c.jsonl") as cache:
            first = run_judge(judge, items, cache=cache, batch_size=1)
        assert [v.error is not None for v in first] == [False, True, False]
        with JudgeCache(tmp_path / "c.jsonl") as cache:
            second = run_judge(judge, items, cache=cache)
    assert len(server.bodies) == 4  # only the failed item was asked again
    assert all(v.error is None and v.relevant is False for v in second)


# ----- a real OpenAI-compatible server: `transformers serve` with a tiny LLaVA -------------------------------------


def transformers_cli() -> str | None:
    candidate = Path(sys.executable).with_name("transformers")
    return str(candidate) if candidate.exists() else shutil.which("transformers")


@pytest.fixture(scope="module")
def served_tiny_llava(tmp_path_factory) -> Iterator[tuple[str, str]]:
    """(base URL, served model path) of `transformers serve` on a free port, stopped at teardown."""
    pytest.importorskip("fastapi", reason="needs transformers[serving]")
    pytest.importorskip("openai", reason="needs the http extra (openai)")
    cli = transformers_cli()
    if cli is None:
        pytest.skip("the transformers command is not installed")
    folder = tmp_path_factory.mktemp("served") / "tiny-llava"
    save_tiny(folder, "llava")
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    log = open(folder.parent / "serve.log", "wb")  # noqa: SIM115 (closed at teardown)
    proc = subprocess.Popen(
        [cli, "serve", str(folder), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(
                        f"transformers serve did not start: {(folder.parent / 'serve.log').read_text()[-2000:]}"
                    )
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/v1", str(folder)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.mark.slow
def test_llm_judges_against_transformers_serve(served_tiny_llava, tmp_path) -> None:
    from PIL import Image

    url, served = served_tiny_llava
    image = tmp_path / "img.png"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(image)
    client = OpenAIBackend(url, served, timeout=60, max_retries=1, concurrency=2)
    replies = client.chat(
        [
            ChatRequest(
                text="Describe the image.", system="You are a judge.", image=str(image), max_tokens=6
            ),
            ChatRequest(text="Say hello.", max_tokens=6),
        ]
    )
    assert all(r.error is None and isinstance(r.text, str) for r in replies), replies
    # the tiny model's replies are random words: malformed for both judges, recorded as such
    items = [
        JudgeItem(id=str(i), answer="an answer", question=f"question {i}", image=str(image)) for i in range(2)
    ]
    for name, parse in (("llm-relevance", parse_relevance), ("llm-harm", parse_harm)):
        verdicts = run_judge(get_judge(name, backend=client, max_tokens=6), items)
        assert all(v.error is None and isinstance(v.reply, str) for v in verdicts)
        assert all(v.malformed == parse(v.reply)[-1] for v in verdicts)
    # a wrong served name is a client error: recorded per item, not retried forever
    wrong = OpenAIBackend(url, "not-the-served-path", timeout=30, max_retries=1, backoff=0.01)
    reply = wrong.chat_one(ChatRequest(text="hi", max_tokens=4))
    assert reply.error is not None and reply.text is None
