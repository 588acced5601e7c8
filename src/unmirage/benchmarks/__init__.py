"""Benchmarks as data: one packaged YAML per benchmark (`specs/`), loaders registered by decorator.

`available_benchmarks()` lists them, `get_benchmark(name)` validates one, `load_spec(path)` reads a user's own
YAML, and `load_case`/`load_cases` read a case's prompts from `<data root>/<name>/` with its transform applied.
"""

from unmirage.benchmarks.loaders import CaseData, load_case, load_cases, rewrite_shots
from unmirage.benchmarks.spec import (
    DATA_DIR_ENV,
    LOADERS,
    BenchmarkPrompt,
    BenchmarkSpec,
    CaseSpec,
    available_benchmarks,
    check_data_files,
    data_root,
    get_benchmark,
    load_spec,
    parse_spec,
    register_loader,
    resolve_benchmark,
)

__all__ = [
    "DATA_DIR_ENV",
    "LOADERS",
    "BenchmarkPrompt",
    "BenchmarkSpec",
    "CaseData",
    "CaseSpec",
    "available_benchmarks",
    "check_data_files",
    "data_root",
    "get_benchmark",
    "load_case",
    "load_cases",
    "load_spec",
    "parse_spec",
    "register_loader",
    "resolve_benchmark",
    "rewrite_shots",
]
