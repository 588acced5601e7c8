"""A JSON-lines cache of LLM verdicts keyed by (judge name, prompt hash, model).

Each judged batch is appended (and flushed) as soon as it is done, so a killed judging run loses at most one
batch. Verdicts with an `error` are never stored: a rerun asks again for exactly those items.
"""

from __future__ import annotations

import os
from pathlib import Path

from unmirage.judges.base import Verdict, stable_hash
from unmirage.runs import JsonlAppender, read_jsonl_resumable


def cache_key(judge: str, prompt_hash: str, model: str) -> str:
    """The cache key of one verdict."""
    return stable_hash([judge, prompt_hash, model])


class JudgeCache:
    """Verdicts by key, loaded from and appended to one JSONL file (or kept in memory when `path` is None)."""

    def __init__(self, path: str | os.PathLike | None) -> None:
        self.path = Path(path) if path is not None else None
        self._entries: dict[str, Verdict] = {}
        self._writer: JsonlAppender | None = None
        if self.path is not None:
            for row in read_jsonl_resumable(self.path):
                key, verdict = row.get("key"), row.get("verdict")
                if isinstance(key, str) and isinstance(verdict, dict):
                    self._entries[key] = Verdict.from_json(verdict)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> Verdict | None:
        """The cached verdict, or None."""
        return self._entries.get(key)

    def put_many(self, rows: list[tuple[str, str, str, str, Verdict]]) -> None:
        """Store (key, judge, prompt hash, model, verdict) rows; errors are skipped."""
        fresh = [r for r in rows if r[4].error is None]
        for key, *_rest, verdict in fresh:
            self._entries[key] = verdict
        if self.path is None or not fresh:
            return
        if self._writer is None:
            self._writer = JsonlAppender(self.path)
        self._writer.write_many(
            {"key": k, "judge": j, "prompt_hash": h, "model": m, "verdict": v.to_json()}
            for k, j, h, m, v in fresh
        )

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> JudgeCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
