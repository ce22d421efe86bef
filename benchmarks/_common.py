"""What every benchmark records beside its numbers, in one place: when and on which machine it ran, and the two
result files it writes (``<stem>.json`` for programs, ``<stem>.md`` for people).

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import machine_info, machine_line, utc_now, write_results

Timings depend on the CPU model, not only on the number of cores (the project's sessions have run on an Intel Xeon
with AMX/bfloat16 and on an AMD EPYC, with make test 412 s vs 565 s), so every result file names the CPU, the cores
and threads, the memory, the GPU (or that there was none) and the load when it was measured. Not a benchmark itself
(``run_all.py`` skips modules whose name starts with an underscore).
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

__all__ = ["utc_now", "cpu_model", "machine_info", "machine_line", "write_results"]


def utc_now() -> str:
    """The time a result was measured, as every results file writes it: ``2026-12-07 15:03 UTC``."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(**extra: Any) -> dict[str, Any]:
    """The machine a benchmark ran on: date, CPU model, cores, memory, platform, Python, load average, torch and its
    thread count, the GPU (``None`` without CUDA); ``extra`` items are added (e.g. ``simpleitk=`` or the threads a
    run was limited to)."""
    info: dict[str, Any] = {"date": utc_now(), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
                            "platform": platform.platform(), "python": platform.python_version()}
    try:
        info["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024 ** 3, 1)
    except (ValueError, OSError, AttributeError):
        pass
    try:
        info["load_average_1_5_15"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    try:
        import torch
    except ImportError:
        info["gpu"] = None
    else:
        info.update({"torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                     "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None})
    info.update(extra)
    return info


def machine_line(info: dict[str, Any]) -> str:
    """One line for a results table's header: ``AMD EPYC 7B13 (2 cores, 23.4 GB, no GPU), Linux-...``."""
    parts = [f"{info.get('cpu_count', '?')} cores"]
    if info.get("memory_gb"):
        parts.append(f"{info['memory_gb']:.0f} GB")
    parts.append(f"GPU {info['gpu']}" if info.get("gpu") else "no GPU")
    return f"{info.get('cpu', 'unknown CPU')} ({', '.join(parts)}), {info.get('platform', '')}".rstrip(", ")


def write_results(out: str | Path, stem: str, result: Any = None, lines: list[str] | None = None, *,
                  echo: bool = True, default=float) -> None:
    """Write ``out/stem.json`` (``result``, indented; numpy scalars via ``default``) and ``out/stem.md`` (``lines``
    joined), creating ``out``; ``echo`` prints the Markdown too."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if result is not None:
        (out / f"{stem}.json").write_text(json.dumps(result, indent=2, default=default) + "\n", encoding="utf-8")
    if lines is not None:
        text = "\n".join(lines) + "\n"
        (out / f"{stem}.md").write_text(text, encoding="utf-8")
        if echo:
            print(text, end="")


def kept_notes(md_path: str | Path, heading: str) -> list[str]:
    """The hand-written part of an earlier report (from ``heading`` on, e.g. dated readings of each run) as lines,
    with a blank line before it, to keep below a re-run's generated tables; empty when there is none."""
    md_path = Path(md_path)
    old = md_path.read_text(encoding="utf-8") if md_path.is_file() else ""
    return ["", *old[old.index(heading):].rstrip("\n").split("\n")] if heading in old else []
