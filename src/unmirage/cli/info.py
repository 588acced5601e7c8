"""`unmirage info`: versions, device and threads."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    app.command(
        "info",
        help="Print versions of unmirage and its libraries, the device, CPU threads and the measured fp32 "
        "matrix-multiply speed (GFLOP/s, about 1 s), to compare run times between machines.\n\n"
        "Example: unmirage info",
    )(info)


def info() -> None:
    import os

    import torch
    from rich.console import Console
    from rich.table import Table

    from unmirage import __version__
    from unmirage.runs import git_revision, library_versions

    table = Table(show_header=False, box=None)
    table.add_row("unmirage", f"{__version__} ({git_revision() or 'not a git checkout'})")
    for name, version in library_versions().items():
        table.add_row(name, version)
    if torch.cuda.is_available():
        device = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    else:
        device = "cpu"
    table.add_row("device", device)
    table.add_row("torch threads", str(torch.get_num_threads()))
    table.add_row("cpu cores", str(os.cpu_count()))
    table.add_row("OMP_WAIT_POLICY", os.environ.get("OMP_WAIT_POLICY", "(unset)"))
    from unmirage.machine import matmul_flops

    gflops = matmul_flops() / 1e9
    table.add_row("fp32 matmul", f"{gflops:.0f} GFLOP/s ({torch.get_num_threads()} thread(s), measured now)")
    Console().print(table)
