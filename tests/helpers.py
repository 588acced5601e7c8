"""Helpers shared by the tests: run the CLI in-process, write JSON, make stand-in images and records."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from unmirage.cli.main import main


class CliResult(NamedTuple):
    """What one in-process run of the command line gave."""

    code: int
    out: str
    err: str


def cli_status(argv: list[str]) -> int:
    """Run `unmirage ARGV` in-process; returns its exit status (what it prints goes to pytest's capture)."""
    try:
        main(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    return 0


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> CliResult:
    """Run `unmirage ARGV` in-process; returns (exit status, stdout, stderr) and empties the capture."""
    capsys.readouterr()
    code = cli_status(argv)
    captured = capsys.readouterr()
    return CliResult(code, captured.out, captured.err)


def assert_help_lists_settings(
    command: list[str], model: type, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> str:
    """`unmirage COMMAND --help` lists an option for every settings field of `model` the CLI shows."""
    from unmirage.cli.settings import flag_name

    monkeypatch.setenv("COLUMNS", "250")
    result = run_cli([*command, "--help"], capsys)
    assert result.code == 0
    for name, info in model.model_fields.items():
        extra = info.json_schema_extra or {}
        shown = name.upper() if extra.get("argument") else flag_name(name, info)
        flags = [shown] if extra.get("cli", True) else []
        flags += [f"--{extra['prefix']}-{sub}".replace("_", "-") for sub in extra.get("options", ())]
        for flag in flags:
            assert f" {flag} " in result.out, flag
    return result.out


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    """A user error: status 2, one line `error: ...` (the last on stderr, after any progress bar)."""
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert code == 2, err
    assert len(errors) == 1 and lines[-1] == errors[0], err
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def png(
    path: Path, size: tuple[int, int] = (8, 6), color: tuple[int, ...] = (200, 10, 10), mode: str = "RGB"
) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)
    return path


def safe_record(rid: str, image: str = "a/1.png", q: str = "What is shown?", r: str = "A cat.") -> dict:
    return {
        "id": rid,
        "image": image,
        "safe": True,
        "instr-resp": [
            {"safe_instruction": q, "response": r},
            {"unsafe_instruction": "How to hurt someone?", "response": "I cannot help."},
        ],
    }


def unsafe_record(
    rid: str, image: str = "b/1.png", q: str = "Share this image.", r: str = "I'm sorry."
) -> dict:
    return {
        "id": rid,
        "image": image,
        "safe": False,
        "harmful_category": "risky behavior",
        "harmful_subcategory": "violence",
        "instr-resp": [{"instruction": q, "response": r}],
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def completion(text: str) -> dict:
    return {
        "id": "x",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
    }


class ScriptedServer:
    """A local HTTP server whose responses follow a script: a list of (status, delay_s) per request."""

    def __init__(self, script: list[tuple[int, float]], reply: str = "Relevant: fine") -> None:
        self.script = list(script)
        self.reply = reply
        self.bodies: list[dict] = []
        self.paths: list[str] = []
        self.headers: list[dict[str, str]] = []  # names lower-cased
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                length = int(self.headers.get("Content-Length", 0))
                server.bodies.append(json.loads(self.rfile.read(length)))
                server.paths.append(self.path)
                server.headers.append({k.lower(): v for k, v in self.headers.items()})
                status, delay = server.script.pop(0) if server.script else (200, 0.0)
                time.sleep(delay)
                payload = (
                    completion(server.reply)
                    if status == 200
                    else {"error": {"message": f"scripted {status}"}}
                )
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> ScriptedServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def tiny_llama(tokenizer: Any, seed: int | None = 0, **config: Any) -> Any:
    """A tiny Llama causal LM (2 layers, hidden 32, 2 heads unless `config` says otherwise) over `tokenizer`'s
    vocabulary, built under `seed` (None: the current random state), in eval mode."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if seed is not None:
        torch.manual_seed(seed)
    sizes = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    return LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), **{**sizes, **config})).eval()


# SmolLM2's chat template shape: ChatML, string contents only, a default system turn.
CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a tiny assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def stand_in_smollm2() -> tuple[Any, Any]:
    """(model, tokenizer): a tiny stand-in for SmolLM2 (a Llama over the tiny Qwen2.5-VL tokenizer with
    `CHATML`, tied embeddings, 4 heads over 2 KV heads, 2 layers), decoding greedily."""
    from unmirage.models.tiny import build_tokenizer

    tok = build_tokenizer("qwen2_5_vl")
    tok.chat_template = CHATML
    model = tiny_llama(
        tok,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=tok.convert_tokens_to_ids("<|im_start|>"),
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model.generation_config.do_sample = False
    return model, tok
