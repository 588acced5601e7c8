"""Run every benchmark under bench/ (one process each) and print one table of their results.

Each script prints `RESULT {json}` lines (see _common.py). `python bench/run_all.py [name ...]` runs a subset.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
SKIP = {"run_all.py", "gpu_smoke.py"}  # gpu_smoke needs a GPU: run it by hand; _*.py are helpers


def main(argv: list[str]) -> int:
    scripts = sorted(p for p in HERE.glob("*.py") if p.name not in SKIP and not p.name.startswith("_"))
    if argv:
        scripts = [p for p in scripts if p.stem in argv]
    table = Table(title="unmirage benchmarks (measured side by side in each run)")
    for column in ("bench", "metric", "value", "unit", "target"):
        table.add_column(column)
    failed = []
    for script in scripts:
        start = time.perf_counter()
        print(f"running {script.name} ...", flush=True)
        proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
        if proc.returncode != 0:
            failed.append(script.name)
            print(proc.stdout[-2000:], proc.stderr[-4000:], sep="\n", file=sys.stderr)
            continue
        for line in proc.stdout.splitlines():
            if line.startswith("RESULT "):
                row = json.loads(line[len("RESULT ") :])
                table.add_row(
                    row["bench"],
                    row["metric"],
                    f"{row['value']:g}",
                    row.get("unit") or "",
                    row.get("target") or "",
                )
        print(f"  {script.name}: {time.perf_counter() - start:.1f} s", flush=True)
    Console().print(table)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
