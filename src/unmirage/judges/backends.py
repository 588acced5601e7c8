"""Where LLM judges get their replies: a local Hugging Face model or any OpenAI-compatible endpoint.

Both take a list of `ChatRequest`s and return one `BackendReply` per request, in order. A reply carries either
the text or an error message; an error never raises, so one bad item cannot stop a long judging run, and a
rerun retries exactly the items that failed (errors are not cached).
"""

from __future__ import annotations

import base64
import io
import random
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from unmirage.errors import UnmirageError

RETRYABLE_STATUS = frozenset({408, 409, 425, 429}) | frozenset(range(500, 600))


@dataclass(frozen=True)
class ChatRequest:
    """One judge query: optional system text, the user text, an optional image file, a reply length cap."""

    text: str
    system: str | None = None
    image: str | None = None
    max_tokens: int = 256


@dataclass(frozen=True)
class BackendReply:
    """The reply text, or the error that prevented it (after retries)."""

    text: str | None = None
    error: str | None = None
    attempts: int = 1


class ChatBackend(Protocol):
    """What LLM judges need from a backend."""

    model_id: str

    def chat(self, requests: Sequence[ChatRequest]) -> list[BackendReply]:
        """One reply per request, in order; failures come back as replies with `error` set."""
        ...

    def describe(self) -> dict[str, Any]:
        """Settings that identify the backend (for manifests)."""
        ...


def image_data_url(path: str | Path, max_side: int | None = None) -> str:
    """A `data:` URL with the image (PNG and JPEG files as they are, anything else re-encoded as PNG)."""
    path = Path(path)
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
        import os

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
        return {"backend": "openai", "base_url": self.base_url, "model": self.model_id, "timeout": self.timeout,
                "max_retries": self.max_retries, "temperature": self.temperature}  # fmt: skip

    def messages(self, request: ChatRequest) -> list[dict[str, Any]]:
        """The OpenAI `messages` list for one request (image as a base64 data URL)."""
        messages: list[dict[str, Any]] = []
        if request.system:
            messages.append({"role": "system", "content": request.system})
        if request.image is None:
            messages.append({"role": "user", "content": request.text})
        else:
            url = image_data_url(request.image, self.image_max_side)
            messages.append({"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": url}},
                {"type": "text", "text": request.text},
            ]})  # fmt: skip
        return messages

    def chat(self, requests: Sequence[ChatRequest]) -> list[BackendReply]:
        if self.concurrency == 1 or len(requests) <= 1:
            return [self.chat_one(r) for r in requests]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests))) as pool:
            return list(pool.map(self.chat_one, requests))

    def chat_one(self, request: ChatRequest) -> BackendReply:
        """One request with retries; never raises for server or network trouble."""
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
            else:
                text = _reply_text(response)
                if text is None:
                    error = "the server's reply has no message content"
                else:
                    return BackendReply(text=text, attempts=attempt + 1)
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
    """Replies from a local Hugging Face model, greedy, in batches (left padding).

    The prompt is the model's own chat template through its family adapter (`build_prompt(template="chat")`,
    with the system text as a system turn). Text-only requests go to the same model without an image.
    """

    def __init__(
        self,
        model: str,
        *,
        dtype: str = "auto",
        batch_size: int = 8,
        loaded: Any = None,
    ) -> None:
        if loaded is None:
            from unmirage.models import load_model

            loaded = load_model(model, dtype=dtype)
        self.loaded = loaded
        self.model_id = str(model)
        self.batch_size = max(1, batch_size)
        self.dtype = dtype

    def describe(self) -> dict[str, Any]:
        return {"backend": "hf", "model": self.model_id, "dtype": self.dtype, "batch_size": self.batch_size}

    def prompt(self, request: ChatRequest) -> str:
        """The chat-template prompt for one request."""
        loaded = self.loaded
        return loaded.family.build_prompt(
            request.text,
            template="chat",
            processor=loaded.processor,
            has_image=request.image is not None and loaded.multimodal,
            system=request.system,
        )

    def chat(self, requests: Sequence[ChatRequest]) -> list[BackendReply]:
        replies: list[BackendReply] = []
        # Text-only and image requests cannot share a processor call; keep the order by running in runs.
        start = 0
        while start < len(requests):
            with_image = requests[start].image is not None
            end = start
            while (
                end < len(requests)
                and end - start < self.batch_size
                and (requests[end].image is not None) == with_image
            ):
                end += 1
            replies.extend(self._generate(requests[start:end]))
            start = end
        return replies

    def _generate(self, requests: Sequence[ChatRequest]) -> list[BackendReply]:
        import torch
        from PIL import Image

        loaded = self.loaded
        processor = loaded.processor
        tokenizer = loaded.tokenizer
        prompts = [self.prompt(r) for r in requests]
        use_images = loaded.multimodal and requests[0].image is not None
        kwargs: dict[str, Any] = {"text": prompts, "return_tensors": "pt", "padding": True}
        if use_images:
            images = []
            for r in requests:
                try:
                    with Image.open(r.image) as img:
                        images.append(img.convert("RGB"))
                except OSError as err:
                    raise UnmirageError(f"not a readable image ({err})", file=r.image) from None
            kwargs["images"] = images
        side = getattr(tokenizer, "padding_side", "right")
        tokenizer.padding_side = "left"
        try:
            inputs = (
                processor(**kwargs)
                if loaded.multimodal
                else tokenizer(prompts, return_tensors="pt", padding=True)
            )
        finally:
            tokenizer.padding_side = side
        inputs = inputs.to(loaded.device)
        max_new = max(r.max_tokens for r in requests)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        with torch.inference_mode():
            output = loaded.model.generate(
                **inputs, max_new_tokens=max_new, do_sample=False, pad_token_id=pad
            )
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        return [BackendReply(text=t.strip()) for t in texts]


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
            raise UnmirageError("--judge-url needs --judge-model: the model name the server serves")
        return OpenAIBackend(url, model, api_key=api_key, timeout=timeout, max_retries=max_retries,
                             concurrency=concurrency, temperature=temperature)  # fmt: skip
    if model:
        return HFBackend(model, dtype=dtype, batch_size=batch_size)
    return None
