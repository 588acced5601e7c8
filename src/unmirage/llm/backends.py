"""The LLM client used by judges, attacks and mining: a local Hugging Face model or any OpenAI-compatible
endpoint.

Both take a list of `ChatRequest`s and return one `BackendReply` per request, in order. A reply carries either
the text or an error message; an error never raises, so one bad item cannot stop a long judging run, and a
rerun retries exactly the items that failed (errors are not cached).
"""

from __future__ import annotations

import base64
import io
import os
import random
import re
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from unmirage.errors import UnmirageError

if TYPE_CHECKING:
    from unmirage.models import LoadedModel

RETRYABLE_STATUS = frozenset({408, 409, 425, 429}) | frozenset(range(500, 600))
DEFAULT_KEY_ENV = "UNMIRAGE_JUDGE_API_KEY"
MAX_REPLY_CHARS = 8192
"""Longest judge reply kept (verdicts are on the first line); longer ones are cut and marked as truncated."""
SECRET_QUERY = re.compile(r"(key|token|secret|password|passwd|pwd|sig|auth|credential)", re.IGNORECASE)


def redact_url(url: str) -> str:
    """`url` with any user:password and secret-looking query values replaced by `***` (for manifests, logs)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = "&".join(
        f"{k}=***" if SECRET_QUERY.search(k) else (f"{k}={v}" if v else k)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def read_api_key(env: str) -> str | None:
    """The API key in environment variable `env`; an explicitly named variable that is unset is an error
    (the default variable may be unset: servers without a key)."""
    value = os.environ.get(env)
    if not value and env != DEFAULT_KEY_ENV:
        raise UnmirageError(f"the API key variable {env} is not set (or empty) in the environment")
    return value or None


def cap_reply(text: str, limit: int = MAX_REPLY_CHARS) -> str:
    """A reply of at most `limit` characters; a longer one is cut and ends with a note saying so."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]} [reply truncated: {len(text)} characters]"


@dataclass(frozen=True)
class ChatRequest:
    """One judge query: optional system text, the user text, an optional image file, a reply length cap.

    With `choices`, the reply is not generated but chosen: the choice the model finds most likely as the
    start of its reply (local models only). Weak local judges often ignore the asked-for format when they
    generate; choosing among the allowed openings always gives a well-formed reply.
    """

    text: str
    system: str | None = None
    image: str | None = None
    max_tokens: int = 256
    choices: tuple[str, ...] | None = None


@dataclass(frozen=True)
class BackendReply:
    """The reply text, or the error that prevented it (after retries)."""

    text: str | None = None
    error: str | None = None
    attempts: int = 1


class ChatBackend(Protocol):
    """What LLM judges, attacks and mining need from a backend."""

    model_id: str

    def chat(self, requests: Sequence[ChatRequest]) -> list[BackendReply]:
        """One reply per request, in order; failures come back as replies with `error` set."""
        ...

    def describe(self) -> dict[str, Any]:
        """Settings that identify the backend (for manifests)."""
        ...


@runtime_checkable
class ScoringBackend(ChatBackend, Protocol):
    """A backend that also reads its model's probabilities (a local model; `llm-topic`, choice scoring)."""

    def continuation_log_probs(
        self, requests: Sequence[ChatRequest], continuations: Sequence[str]
    ) -> list[tuple[float, int]]:
        """(log P(continuation | prompt) summed over its tokens, its token count) per request."""
        ...


def image_data_url(path: str | Path, max_side: int | None = None) -> str:
    """A `data:` URL with the image (PNG and JPEG files as they are, anything else re-encoded as PNG)."""
    from unmirage.data.images import check_image_file

    path = Path(path)
    check_image_file(path, decode=False)  # size, pixel limit, header: the project's one image check
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise UnmirageError(f"cannot read image ({err.strerror})", file=path) from None
    suffix = path.suffix.lower()
    if max_side is None and suffix in (".png", ".jpg", ".jpeg"):
        mime = "image/png" if suffix == ".png" else "image/jpeg"
        return f"data:{mime};base64,{base64.b64encode(raw).decode('ascii')}"
    from PIL import Image

    try:
        with Image.open(io.BytesIO(raw)) as img:
            img = img.convert("RGB")
            if max_side is not None and max(img.size) > max_side:
                img.thumbnail((max_side, max_side))
            buffer = io.BytesIO()
            img.save(buffer, format="PNG")
    except OSError as err:
        raise UnmirageError(f"not a readable image ({err})", file=path) from None
    return f"data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


class OpenAIBackend:
    """Chat completions from an OpenAI-compatible server (vLLM, `transformers serve`, hosted APIs).

    Every request has a time-out; connection failures, time-outs and retryable statuses (429, 5xx) are retried
    with exponential back-off (`backoff * 2**attempt`, capped at `max_backoff`, with a little jitter); other
    statuses (400, 401, 404, ...) fail at once. The request sets only `model`, `messages`, `max_tokens` and
    `temperature` (no logprobs, no response_format), so any compatible server works. `model` must be the
    name the server serves the model under (for `transformers serve`, the served path).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 4,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        concurrency: int = 4,
        temperature: float = 0.0,
        image_max_side: int | None = None,
    ) -> None:
        try:
            import openai
        except ImportError:
            raise UnmirageError(
                "the HTTP judge backend needs the openai client: pip install 'unmirage[http]'"
            ) from None
        self._openai = openai
        self.base_url = base_url.rstrip("/")
        self.model_id = model
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.concurrency = max(1, concurrency)
        self.temperature = temperature
        self.image_max_side = image_max_side
        key = (
            api_key or os.environ.get("UNMIRAGE_JUDGE_API_KEY") or os.environ.get("OPENAI_API_KEY") or "none"
        )
        self.client = openai.OpenAI(base_url=self.base_url, api_key=key, timeout=timeout, max_retries=0)
        self._jitter = random.Random()

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "openai",
            "base_url": redact_url(self.base_url),
            "model": self.model_id,
            "timeout": self.timeout,
            "max_retries": self.max_retries,
            "temperature": self.temperature,
        }

    def messages(self, request: ChatRequest) -> list[dict[str, Any]]:
        """The OpenAI `messages` list for one request (image as a base64 data URL)."""
        messages: list[dict[str, Any]] = []
        if request.system:
            messages.append({"role": "system", "content": request.system})
        if request.image is None:
            messages.append({"role": "user", "content": request.text})
        else:
            url = image_data_url(request.image, self.image_max_side)
            messages.append(
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": url}},
                        {"type": "text", "text": request.text},
                    ],
                }
            )
        return messages

    def chat(self, requests: Sequence[ChatRequest]) -> list[BackendReply]:
        if self.concurrency == 1 or len(requests) <= 1:
            return [self.chat_one(r) for r in requests]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests))) as pool:
            return list(pool.map(self.chat_one, requests))

    def chat_one(self, request: ChatRequest) -> BackendReply:
        """One request with retries; never raises for server or network trouble."""
        if request.choices is not None:
            raise UnmirageError(
                "choice scoring needs the judge model's probabilities: use a local judge model"
            )
        openai = self._openai
        messages = self.messages(request)
        error = "no attempt made"
        for attempt in range(self.max_retries + 1):
            try:
                response = self.client.chat.completions.create(
                    model=self.model_id,
                    messages=messages,
                    max_tokens=request.max_tokens,
                    temperature=self.temperature,
                )
            except openai.APIStatusError as err:
                error = f"HTTP {err.status_code}: {_short(err.message)}"
                if err.status_code not in RETRYABLE_STATUS:
                    return BackendReply(error=error, attempts=attempt + 1)
            except openai.APITimeoutError:
                error = f"timed out after {self.timeout:g} s"
            except openai.APIConnectionError as err:
                error = f"connection failed: {_short(str(err.__cause__ or err))}"
            except (openai.APIError, ValueError, RecursionError) as err:  # a 200 whose body is not JSON
                error = f"the server's reply is not valid JSON ({_short(type(err).__name__)})"
            else:
                text = _reply_text(response)
                if text is None:
                    error = "the server's reply has no message content"
                else:
                    return BackendReply(text=cap_reply(text), attempts=attempt + 1)
            if attempt < self.max_retries:
                delay = min(self.max_backoff, self.backoff * 2**attempt)
                time.sleep(delay * (1 + 0.1 * self._jitter.random()))
        return BackendReply(
            error=f"{error} (after {self.max_retries + 1} attempts)", attempts=self.max_retries + 1
        )


def _reply_text(response: Any) -> str | None:
    try:
        content = response.choices[0].message.content
    except (AttributeError, IndexError, TypeError):
        return None
    return content if isinstance(content, str) else None


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class HFBackend:
    """Replies from a local Hugging Face model through `unmirage.generate.BatchedGenerator`.

    Greedy, batched (left padding, length buckets); by default the model's own chat template
    (`template="chat"`) with the system text as a system turn (`template="v1"`: the reference's plain
    prompt). Requests with and without an image, or with another system text or reply length, are
    generated in separate groups; replies come back in request order. Text-only models ignore images.
    """

    def __init__(
        self,
        model: str,
        *,
        dtype: str = "auto",
        batch_size: int = 8,
        device: str = "auto",
        template: str = "chat",
        loaded: LoadedModel | None = None,
    ) -> None:
        if loaded is None:
            from unmirage.models import load_model, resolve_device

            loaded = load_model(model, dtype=dtype, device_map=resolve_device(device))
        self.loaded = loaded
        self.model_id = str(model)
        self.batch_size = max(1, batch_size)
        self.dtype = dtype
        self.template = template
        self._generators: dict[tuple[str | None, int], Any] = {}

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "hf",
            "model": self.model_id,
            "dtype": self.dtype,
            "batch_size": self.batch_size,
            "template": self.template,
        }

    def generator(self, request: ChatRequest) -> Any:
        """The `BatchedGenerator` for a request's system text and reply length (one per distinct pair)."""
        key = (request.system, request.max_tokens)
        if key not in self._generators:
            from unmirage.generate import GenerationConfig, make_answerer

            config = GenerationConfig(
                template=self.template,
                system=request.system,
                max_new_tokens=request.max_tokens,
                batch_size=self.batch_size,
            )
            self._generators[key] = make_answerer(self.loaded, config)
        return self._generators[key]

    def prompt(self, request: ChatRequest) -> str:
        """The prompt text of one request."""
        has_image = request.image is not None and self.loaded.multimodal
        return self.generator(request).prompt(self._item(0, request), has_image)

    @staticmethod
    def _item(index: int, request: ChatRequest) -> Any:
        from unmirage.generate import GenItem

        return GenItem(id=str(index), question=request.text, image=request.image)

    def chat(self, requests: Sequence[ChatRequest]) -> list[BackendReply]:
        groups: dict[tuple[Any, ...], list[int]] = {}
        for index, r in enumerate(requests):
            groups.setdefault((r.system, r.max_tokens, r.image is not None, r.choices), []).append(index)
        replies: list[BackendReply] = [BackendReply()] * len(requests)
        for indices in groups.values():
            group = [requests[i] for i in indices]
            if group[0].choices is not None:
                texts = self.choose(group)
            else:
                rows = self.generator(group[0])(
                    [self._item(i, r) for i, r in zip(indices, group, strict=True)]
                )
                texts = [row["answer"] for row in rows]
            for i, text in zip(indices, texts, strict=True):
                replies[i] = BackendReply(text=text)
        return replies

    def continuation_log_probs(
        self, requests: Sequence[ChatRequest], continuations: Sequence[str]
    ) -> list[tuple[float, int]]:
        """(log P(continuation | prompt) summed over its tokens, its token count) per request: each
        continuation is scored as the assistant's prefilled reply to its request (left-padded batches)."""
        import torch

        from unmirage.generate import GenItem

        base = self.generator(requests[0])
        model, device = self.loaded.model, self.loaded.device
        out: list[tuple[float, int]] = []
        for start in range(0, len(requests), self.batch_size):
            batch = list(
                zip(
                    requests[start : start + self.batch_size],
                    continuations[start : start + self.batch_size],
                    strict=True,
                )
            )
            full, _ = base.encode(
                [
                    GenItem(id=str(i), question=r.text, image=r.image, assistant_prefix=c)
                    for i, (r, c) in enumerate(batch)
                ]
            )
            alone, _ = base.encode(
                [
                    GenItem(id=str(i), question=r.text, image=r.image, assistant_prefix="")
                    for i, (r, _c) in enumerate(batch)
                ]
            )
            lengths = (full["attention_mask"].sum(1) - alone["attention_mask"].sum(1)).tolist()
            full = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in full.items()}
            with torch.inference_mode():
                logits = model(**full).logits[:, :-1].float()
            ids = full["input_ids"][:, 1:]
            token_lp = torch.log_softmax(logits, dim=-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
            for row, n in enumerate(lengths):  # left padding: the continuation is the last n tokens
                out.append((float(token_lp[row, token_lp.shape[1] - n :].sum()) if n > 0 else 0.0, int(n)))
        return out

    def choice_log_probs(self, requests: Sequence[ChatRequest]) -> list[list[float]]:
        """log P(choice | prompt) of every choice, per request (all requests share system text and choices)."""
        choices = requests[0].choices or ()
        columns = [self.continuation_log_probs(requests, [choice] * len(requests)) for choice in choices]
        return [[column[i][0] for column in columns] for i in range(len(requests))]

    def choose(self, requests: Sequence[ChatRequest]) -> list[str]:
        """The most likely choice per request, as a reply text that starts with it and shows the scores."""
        choices = requests[0].choices or ()
        texts = []
        for scores in self.choice_log_probs(requests):
            best = max(range(len(choices)), key=scores.__getitem__)
            shown = ", ".join(f"{c.rstrip(':')} {s:.3f}" for c, s in zip(choices, scores, strict=True))
            texts.append(f"{choices[best]} chosen by likelihood (log p: {shown})")
        return texts


def make_backend(
    model: str | None,
    *,
    url: str | None = None,
    api_key: str | None = None,
    timeout: float = 60.0,
    max_retries: int = 4,
    concurrency: int = 4,
    dtype: str = "auto",
    batch_size: int = 8,
    temperature: float = 0.0,
) -> ChatBackend | None:
    """The backend the command-line options describe: HTTP when `url` is given, a local model otherwise.

    `temperature` applies to the HTTP backend; the local backend always decodes greedily.
    """
    if url:
        if not model:
            raise UnmirageError("judge_url needs judge_model: the model name the server serves")
        return OpenAIBackend(
            url,
            model,
            api_key=api_key,
            timeout=timeout,
            max_retries=max_retries,
            concurrency=concurrency,
            temperature=temperature,
        )
    if model:
        return HFBackend(model, dtype=dtype, batch_size=batch_size)
    return None
