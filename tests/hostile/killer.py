"""Run `unmirage ARGV`, killing the process with SIGKILL at the Nth call of a function (a deterministic kill
point for resume tests): `python killer.py module:Qualified.name N before|after ARGV...`."""

from __future__ import annotations

import functools
import importlib
import os
import signal
import sys


def main() -> None:
    target, nth, when, *argv = sys.argv[1:]
    module_name, _, qualname = target.partition(":")
    owner = importlib.import_module(module_name)
    *parents, name = qualname.split(".")
    for part in parents:
        owner = getattr(owner, part)
    original = getattr(owner, name)
    calls = {"n": 0}

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == int(nth) and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        result = original(*args, **kwargs)
        if calls["n"] == int(nth) and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    setattr(owner, name, wrapper)
    from unmirage.cli.main import main as cli

    cli(argv)


if __name__ == "__main__":
    main()
