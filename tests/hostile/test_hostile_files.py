"""Hostile cases for files that are not what they claim: weights, adapters, images sent to a judge, judge
servers that misbehave."""

from __future__ import annotations

import json
import shutil
import struct
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from helpers import ScriptedServer, png, run_cli
from hostile import assert_untouched, refused, snapshot


@pytest.fixture
def model_copy(models, tmp_path) -> Path:
    return Path(shutil.copytree(models["A"], tmp_path / "model"))


def generate_argv(model: Path, tmp_path: Path) -> list[str]:
    from helpers import unsafe_record, write_json

    data = write_json(tmp_path / "test.json", [unsafe_record("u1")])
    return [
        "generate",
        "--model",
        str(model),
        "--data",
        str(data),
        "--placeholder-images",
        "--out",
        str(tmp_path / "gens.jsonl"),
        "--max-new-tokens",
        "2",
    ]


def rewrite_weights(folder: Path, change) -> None:
    from safetensors.torch import load_file, save_file

    weights = load_file(folder / "model.safetensors")
    change(weights)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.refuse
def test_missing_tensor_is_an_error(model_copy, tmp_path, capsys) -> None:
    rewrite_weights(model_copy, lambda w: w.pop(next(k for k in sorted(w) if "layers.1" in k)))
    refused(run_cli(generate_argv(model_copy, tmp_path), capsys), "1 missing", "UNMIRAGE_PARTIAL_WEIGHTS=1")
    assert not (tmp_path / "gens.jsonl").exists()


@pytest.mark.survive
def test_partial_loading_when_asked_is_recorded(model_copy, monkeypatch) -> None:
    from unmirage.models import load_model

    rewrite_weights(model_copy, lambda w: w.pop(next(k for k in sorted(w) if "layers.1" in k)))
    monkeypatch.setenv("UNMIRAGE_PARTIAL_WEIGHTS", "1")
    loaded = load_model(model_copy, dtype="float32")
    assert loaded.info["weights"]["partial"] is True and len(loaded.info["weights"]["missing_keys"]) == 1


@pytest.mark.refuse
def test_unexpected_tensor_is_an_error(model_copy, tmp_path, capsys) -> None:
    import torch

    rewrite_weights(model_copy, lambda w: w.update({"model.extra_head.weight": torch.zeros(2, 2)}))
    refused(run_cli(generate_argv(model_copy, tmp_path), capsys), "1 unexpected", "extra_head")


@pytest.mark.refuse
@pytest.mark.parametrize("how", ["truncated", "garbage header"])
def test_corrupt_safetensors_is_one_line(model_copy, tmp_path, capsys, how) -> None:
    path = model_copy / "model.safetensors"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2] if how == "truncated" else b"\xff" * 64 + raw[64:])
    refused(
        run_cli(generate_argv(model_copy, tmp_path), capsys), "model.safetensors", "not a valid safetensors"
    )


@pytest.mark.refuse
def test_pickle_adapter_is_refused_by_unmirage(models, tmp_path, capsys) -> None:
    import torch

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2}))
    torch.save({"x": torch.zeros(1)}, adapter / "adapter_model.bin")
    before = snapshot(adapter)
    result = run_cli([*generate_argv(models["A"], tmp_path), "--adapter", str(adapter)], capsys)
    refused(result, "only pickle weights (adapter_model.bin)", "safetensors only")
    assert_untouched(before)


def bomb_png(path: Path, width: int = 60_000, height: int = 60_000) -> Path:
    """A small PNG whose header claims width x height pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = zlib.compress(b"\x00" * 64)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    )
    return path


def judged_answers(tmp_path: Path, image: str = "a.png") -> Path:
    rows = [{"id": "u1", "question": "How?", "answer": "Sure, step one.", "image": image}]
    path = tmp_path / "answers.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def judge_argv(answers: Path, out: Path, url: str, *extra: str) -> list[str]:
    return ["judge", "llm-relevance", "--answers", str(answers), "--out", str(out), "--judge-model", "m"] + [
        "--judge-url",
        url,
        "--retries",
        "0",
        *extra,
    ]


@pytest.mark.refuse
def test_decompression_bomb_is_never_sent_to_the_judge(tmp_path, capsys) -> None:
    images = tmp_path / "images"
    images.mkdir()
    bomb_png(images / "a.png")
    with ScriptedServer([]) as server:
        result = run_cli(
            judge_argv(
                judged_answers(tmp_path), tmp_path / "j.jsonl", server.url, "--image-root", str(images)
            ),
            capsys,
        )
        assert server.bodies == []
    refused(result, "a.png", "record id u1 (line 1)", "decompression bomb")


@pytest.mark.refuse
def test_truncated_image_names_file_and_line(tmp_path, capsys) -> None:
    images = tmp_path / "images"
    png(images / "a.png", size=(64, 64))
    raw = (images / "a.png").read_bytes()
    (images / "a.png").write_bytes(raw[: len(raw) - 30])
    with ScriptedServer([]) as server:
        result = run_cli(
            judge_argv(
                judged_answers(tmp_path), tmp_path / "j.jsonl", server.url, "--image-root", str(images)
            ),
            capsys,
        )
    refused(result, "a.png", "record id u1 (line 1)")


class RawServer:
    """An HTTP server that answers every POST with status 200 and the given body bytes."""

    def __init__(self, body: bytes, content_type: str = "application/json") -> None:
        raw = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(raw.body)))
                self.end_headers()
                self.wfile.write(raw.body)

            def log_message(self, *args: object) -> None:
                pass

        self.body = body
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.survive
@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"<html>proxy login</html>", "application/json"),
        (b"<html>proxy login</html>", "text/html"),
        (b"[" * 100_000, "application/json"),
        (b'{"choices": 5}', "application/json"),
    ],
    ids=["html-as-json", "html", "deep-json", "wrong-shape"],
)
def test_http_200_that_is_not_a_reply_is_a_per_item_error(tmp_path, capsys, body, content_type) -> None:
    server = RawServer(body, content_type)
    try:
        result = run_cli(
            judge_argv(judged_answers(tmp_path), tmp_path / "j.jsonl", server.url, "--text-only"), capsys
        )
    finally:
        server.close()
    assert "Traceback" not in result.err and result.code == 1, result.err
    assert "1 answers could not be judged" in result.err
    row = json.loads((tmp_path / "j.jsonl").read_text())
    assert row["judgements"]["llm-relevance"]["error"]


@pytest.mark.survive
def test_huge_judge_reply_is_capped_and_marked(tmp_path, capsys) -> None:
    from unmirage.llm.backends import MAX_REPLY_CHARS

    reply = "Relevant: " + "x" * 2_000_000
    with ScriptedServer([], reply=reply) as server:
        result = run_cli(
            judge_argv(judged_answers(tmp_path), tmp_path / "j.jsonl", server.url, "--text-only"), capsys
        )
    assert result.code == 0, result.err
    text = (tmp_path / "j.jsonl").read_text()
    assert len(text) < 3 * MAX_REPLY_CHARS and "[reply truncated: 2000010 characters]" in text
    cache = (tmp_path / "judge_cache.jsonl").read_text()
    assert len(cache) < 3 * MAX_REPLY_CHARS


@pytest.mark.survive
def test_text_only_judge_records_no_images_and_redacts_the_url(tmp_path, capsys) -> None:
    with ScriptedServer([], reply="Relevant: yes") as server:
        url = server.url.replace("http://", "http://bob:pa55@") + "?token=t0k"
        result = run_cli(
            judge_argv(judged_answers(tmp_path), tmp_path / "j.jsonl", url, "--text-only"), capsys
        )
        assert "image_url" not in json.dumps(server.bodies)
    assert result.code == 0, result.err
    manifest = (tmp_path / "j.manifest.json").read_text()
    assert json.loads(manifest)["config"]["use_images"] is False
    assert "pa55" not in manifest and "t0k" not in manifest and "bob" not in manifest


@pytest.mark.refuse
def test_unset_api_key_variable_is_an_error(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    argv = judge_argv(judged_answers(tmp_path), tmp_path / "j.jsonl", "http://127.0.0.1:9/v1", "--text-only")
    refused(run_cli([*argv, "--api-key-env", "NO_SUCH_KEY_VAR"], capsys), "NO_SUCH_KEY_VAR is not set")
    assert not (tmp_path / "j.jsonl").exists()


@pytest.mark.survive
def test_json_writers_never_emit_nan_tokens(tmp_path) -> None:
    from unmirage.runs import JsonlAppender, atomic_write_json, read_jsonl

    atomic_write_json(tmp_path / "m.json", {"rate": float("nan"), "n": [float("inf"), 1.0]})
    with JsonlAppender(tmp_path / "m.jsonl") as writer:
        writer.write_many([{"loss": float("-inf")}])
    assert json.loads((tmp_path / "m.json").read_text()) == {"rate": None, "n": [None, 1.0]}
    assert read_jsonl(tmp_path / "m.jsonl") == [{"loss": None}]
