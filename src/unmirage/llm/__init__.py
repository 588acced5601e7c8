"""The LLM client shared by judges, attacks and mining: chat requests and replies, and the backends that
answer them (a local Hugging Face model, `HFBackend`, or an OpenAI-compatible server, `OpenAIBackend`)."""

from unmirage.llm.backends import (
    BackendReply,
    ChatBackend,
    ChatRequest,
    HFBackend,
    OpenAIBackend,
    ScoringBackend,
    make_backend,
    read_api_key,
    redact_url,
)

__all__ = [
    "BackendReply",
    "ChatBackend",
    "ChatRequest",
    "HFBackend",
    "OpenAIBackend",
    "ScoringBackend",
    "make_backend",
    "read_api_key",
    "redact_url",
]
