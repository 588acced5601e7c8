"""Judges: decide, per answer, whether it is a refusal, a hedge, relevant, or harmful.

Every judge is a class with one method, `judge_batch(items) -> verdicts`, registered by name:
`keyword` (the reference refusal list, exactly), `keyword-strict` (a cleaned list that also reads the
answer's opening), `refusal` (a small trained classifier: compliance vs full or partial refusal), `rules` (the reference's irrelevance filter), `llm-relevance` (the reference's
Relevant/Irrelevant LLM judge, with the image), `llm-harm` (a StrongREJECT-style harm rubric) and `llm-topic`
(is the answer about its question, from a local model's likelihoods; for weak local judge models).
LLM judges run on a backend (`unmirage.llm`): a local Hugging Face model or an OpenAI-compatible server.
Every module of this package is imported here, so adding a judge is adding a file: a `Judge` subclass decorated
with `@register_judge(...)`, which declares what the rest of the code knows about it. LLM judges' verdicts are cached
per answer in a JSONL file keyed by (judge, prompt hash, model).
"""

import importlib
import pkgutil

from unmirage.judges.base import (
    JUDGES,
    Judge,
    JudgeItem,
    JudgeSettings,
    Verdict,
    available_judges,
    build_judge,
    get_judge,
    needs_backend,
    refusal_judges,
    register_judge,
)
from unmirage.judges.cache import JudgeCache
from unmirage.judges.runner import items_from_records, judge_file, merge_verdict, run_judge
from unmirage.llm import BackendReply, ChatRequest, HFBackend, OpenAIBackend, make_backend

# Every module of this package is imported, so a judge file registers itself (`@register_judge`); the refusal
# classifier's training script is run as `python -m unmirage.judges.refusal_train`, never imported here.
for _module in pkgutil.iter_modules(__path__):
    if _module.name != "refusal_train":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "JUDGES",
    "BackendReply",
    "ChatRequest",
    "HFBackend",
    "Judge",
    "JudgeCache",
    "JudgeItem",
    "JudgeSettings",
    "OpenAIBackend",
    "Verdict",
    "available_judges",
    "build_judge",
    "get_judge",
    "items_from_records",
    "judge_file",
    "make_backend",
    "merge_verdict",
    "needs_backend",
    "refusal_judges",
    "register_judge",
    "run_judge",
]
