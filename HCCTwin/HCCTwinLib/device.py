"""Compute device selection for the in-process models (segmentation, generator).

Rules (as in the Slicer extensions we imitate): CUDA when torch was built with it and a GPU is visible, otherwise
CPU with a message the UI shows; asking for CUDA on a machine without it falls back to CPU with a warning message,
never an exception; Apple MPS is never used for 3D networks (it lacks or emulates the 3D ops and is slower than the
CPU). A CUDA out-of-memory error during a step falls back to the CPU for that step (:func:`call_with_cpu_fallback`).

torch is imported lazily inside the functions so that importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Mapping
from typing import Any

from .errors import HCCTwinError

#: Below this much GPU memory (GiB) the full-resolution 3D models may not fit; the UI offers the CPU or a coarse run.
MIN_GPU_MEMORY_GB = 4.0

_VALID = ("auto", "cpu", "cuda", "mps")


def cuda_usable() -> bool:
    """True when this torch build has CUDA and a GPU is visible."""
    import torch

    try:
        return bool(torch.backends.cuda.is_built() and torch.cuda.is_available())
    except Exception:  # pragma: no cover - broken driver installs raise here
        return False


def _env_number(name: str, cast, lo, hi, what: str, env) -> None:
    text = env.get(name)
    if text is None or not text.strip():
        return
    try:
        value = cast(text.strip())
    except ValueError:
        value = None
    if value is None or not lo <= value <= hi:
        from .errors import InputError

        raise InputError(f"environment variable {name}={text!r}: expected {what}; fix or unset it.")


def check_environment(env=None) -> None:
    """InputError naming the variable and its bad value for an unusable ``HCCTWIN_*`` setting (checked once when a
    command starts, so a typo is not found deep inside a run, or reported as another value)."""
    from .errors import InputError

    env = os.environ if env is None else env
    device = (env.get("HCCTWIN_DEVICE") or "").strip().lower()
    if device:
        base, _, index = device.partition(":")
        if base not in _VALID or (index and (base != "cuda" or not index.isdigit())):
            raise InputError(f"environment variable HCCTWIN_DEVICE={env['HCCTWIN_DEVICE']!r}: expected one of auto, "
                             f"cpu, cuda, cuda:N; fix or unset it.")
    precision = (env.get("HCCTWIN_CPU_PRECISION") or "").strip().lower()
    if precision and precision not in CPU_PRECISIONS:
        raise InputError(f"environment variable HCCTWIN_CPU_PRECISION={env['HCCTWIN_CPU_PRECISION']!r}: expected one "
                         f"of {', '.join(CPU_PRECISIONS)}; fix or unset it.")
    _env_number("HCCTWIN_NUM_THREADS", int, 1, 4096, "a whole number of CPU threads, 1 or more", env)
    _env_number("HCCTWIN_WORKERS", int, 1, 4096, "a whole number of worker processes, 1 or more", env)
    _env_number("HCCTWIN_MAX_VOXELS", int, 1, 2**40, "a whole number of voxels, e.g. 262144000", env)
    _env_number("HCCTWIN_GPU_MEMORY_GB", float, 0.1, 1e5, "GPU memory in GiB, e.g. 8", env)


def select_device(requested: str | None = "auto") -> tuple[Any, str]:
    """Return ``(torch.device, message)`` for ``requested`` in ``"auto" | "cpu" | "cuda" | "cuda:N" | "mps"``.

    ``"auto"`` (or None) honours the environment variable ``HCCTWIN_DEVICE`` when set. Never raises for a device that
    is merely unavailable: the message says what was chosen and why. The process settings ``HCCTWIN_NUM_THREADS``
    (:func:`set_num_threads`) and, for a GPU, ``HCCTWIN_GPU_MEMORY_GB`` (:func:`gpu_memory_limit`) are applied here,
    so every model load honours them.
    """
    import torch

    if os.environ.get("HCCTWIN_NUM_THREADS"):
        set_num_threads()

    req = (requested or "auto").strip().lower()
    if req == "auto" and os.environ.get("HCCTWIN_DEVICE"):
        req = os.environ["HCCTWIN_DEVICE"].strip().lower()
    base = req.split(":")[0]
    if base not in _VALID:
        raise ValueError(f"unknown device {requested!r}; use one of auto, cpu, cuda, cuda:N")
    if base == "cpu":
        return torch.device("cpu"), "Using the CPU (requested)."
    if base == "mps":
        return torch.device("cpu"), ("Apple MPS is not used for 3D networks (missing/slow 3D operations); "
                                     "using the CPU.")
    if not cuda_usable():
        if not torch.backends.cuda.is_built():
            why = "this PyTorch build has no CUDA support (CPU-only wheel)"
        else:
            why = "no CUDA GPU is visible (driver missing or CUDA_VISIBLE_DEVICES empty)"
        if base == "cuda":
            return torch.device("cpu"), f"Warning: CUDA was requested but {why}; falling back to the CPU (slower)."
        return torch.device("cpu"), f"Using the CPU: {why}."
    index = int(req.split(":")[1]) if ":" in req else 0
    if index >= torch.cuda.device_count():
        return torch.device("cpu"), (f"Warning: GPU cuda:{index} does not exist ({torch.cuda.device_count()} "
                                     f"visible); falling back to the CPU.")
    device = torch.device("cuda", index)
    total = gpu_memory_gb(device)[1]
    message = f"Using GPU {torch.cuda.get_device_name(index)} ({total:.1f} GiB)."
    fraction = gpu_memory_limit(device)
    if fraction is not None:
        message += f" Capped at {fraction * total:.1f} GiB (HCCTWIN_GPU_MEMORY_GB)."
    if total < MIN_GPU_MEMORY_GB:
        message += (f" Warning: less than {MIN_GPU_MEMORY_GB:g} GiB of GPU memory; a large volume may run out of "
                    f"memory and then continue on the CPU.")
    return device, message


def gpu_memory_gb(device=None) -> tuple[float, float]:
    """``(free, total)`` GPU memory in GiB for a CUDA device; ``(0, 0)`` on the CPU."""
    import torch

    if device is None or torch.device(device).type != "cuda" or not cuda_usable():
        return 0.0, 0.0
    free, total = torch.cuda.mem_get_info(torch.device(device))
    return free / 2**30, total / 2**30


def gpu_memory_limit(device=None, *, fraction: float | None = None, gb: float | None = None) -> float | None:
    """Cap this process's share of a GPU (by ``fraction`` of the total or ``gb``); returns the fraction set.

    Environment override: ``HCCTWIN_GPU_MEMORY_GB``. No-op (returns None) on the CPU.
    """
    import torch

    if gb is None and fraction is None and os.environ.get("HCCTWIN_GPU_MEMORY_GB"):
        gb = float(os.environ["HCCTWIN_GPU_MEMORY_GB"])
    if device is None or torch.device(device).type != "cuda" or not cuda_usable():
        return None
    device = torch.device(device)
    if fraction is None:
        if gb is None:
            return None
        total = gpu_memory_gb(device)[1]
        fraction = gb / total if total else 1.0
    fraction = float(min(max(fraction, 0.05), 1.0))
    torch.cuda.set_per_process_memory_fraction(fraction, device)
    return fraction


def set_num_threads(n: int | None = None) -> int:
    """Set torch's CPU thread count (``n``, else ``HCCTWIN_NUM_THREADS``, else leave torch's default)."""
    import torch

    if n is None and os.environ.get("HCCTWIN_NUM_THREADS"):
        n = int(os.environ["HCCTWIN_NUM_THREADS"])
    if n:
        torch.set_num_threads(max(1, int(n)))
    return torch.get_num_threads()


def cpu_threads() -> int:
    """How many threads this process's own CPU work (numpy/scipy, e.g. the twin's renderings) may use:
    ``HCCTWIN_NUM_THREADS`` when set (the same setting as torch's), else the cores this process may run on."""
    if os.environ.get("HCCTWIN_NUM_THREADS"):
        return max(1, int(os.environ["HCCTWIN_NUM_THREADS"]))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


CPU_PRECISIONS = ("auto", "fp32", "bf16")


#: CPU flags (as /proc/cpuinfo names them) that mean native bfloat16 arithmetic
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.lru_cache(maxsize=1)
def cpu_bf16_flags() -> tuple[str, ...]:
    """The native-bfloat16 flags of this CPU (:data:`BF16_CPU_FLAGS` found in ``/proc/cpuinfo``); empty elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return tuple(sorted(set(line.split(":", 1)[1].split()) & set(BF16_CPU_FLAGS)))
    except OSError:
        pass
    return ()


def cpu_native_bf16() -> bool:
    """True when the CPU computes bfloat16 natively (AMX-BF16 or AVX512-BF16, :func:`cpu_bf16_flags`).

    Elsewhere (older x86, other systems) oneDNN emulates bfloat16 and it is slower than float32, so it is not used.
    """
    return bool(cpu_bf16_flags())


def cpu_precision(requested: str | None = None) -> str:
    """Arithmetic of model *inference* on the CPU: ``"bf16"`` (bfloat16 autocast) or ``"fp32"``.

    ``requested`` (or the environment variable ``HCCTWIN_CPU_PRECISION``) is ``auto`` (the default: bf16 where the
    CPU has native bfloat16, see :func:`cpu_native_bf16`), ``fp32`` or ``bf16``. Training is not affected: it runs
    in float32 on the CPU unless its own ``cpu_precision`` argument asks for bfloat16 (``--cpu-bf16``). The measured
    effect on quality and time is in ``benchmarks/results/cpu_precision.md``.
    """
    req = (requested or os.environ.get("HCCTWIN_CPU_PRECISION") or "auto").strip().lower()
    if req not in CPU_PRECISIONS:
        raise ValueError(f"unknown CPU precision {requested!r}; use one of {', '.join(CPU_PRECISIONS)}")
    if req == "auto":
        return "bf16" if cpu_native_bf16() else "fp32"
    return req


def training_precision(device, cpu_precision: str) -> str:
    """Validate a trainer's ``cpu_precision`` (``"fp32"`` or ``"bf16"``) and describe the arithmetic a training run on
    ``device`` uses (for its log and model card)."""
    import torch

    if cpu_precision not in ("fp32", "bf16"):
        raise ValueError(f"cpu_precision must be 'fp32' or 'bf16', not {cpu_precision!r}")
    if torch.device(device).type == "cuda":
        return "CUDA autocast"
    return "bfloat16 autocast (CPU)" if cpu_precision == "bf16" else "float32"


def autocast(device, cpu: str = "fp32"):
    """Mixed precision on CUDA (bfloat16 where supported, else float16); on the CPU bfloat16 autocast when ``cpu`` is
    ``"bf16"`` (inference, see :func:`cpu_precision`), otherwise a no-op context."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        if cpu == "bf16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def compute_label(info: Mapping[str, Any] | None, device: Any = "cpu") -> str:
    """Where and in which arithmetic a model ran this time (its ``last_info``: ``device``, ``cpu_precision``);
    outputs differ in the last digits between them, so provenance says it."""
    info = info or {}
    where = str(info.get("device") or device)
    if where.startswith("cpu"):
        return f"on the CPU, {'bfloat16' if info.get('cpu_precision') == 'bf16' else 'float32'}"
    return f"on {where}, mixed precision"


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl): nothing to hand back this way
        return None


def release_freed_memory() -> None:
    """Hand the heap that large temporary arrays freed back to the system. glibc keeps freed blocks below its
    (growing) mmap threshold in its arenas, one per worker thread, so after a stage of threaded work (the twin's
    renderings) the process would keep that size: measured 1.1 GB kept for 0.17 GB of live follow-ups on a
    512x512x300 study, 0.95 GB of it returned here. A no-op without glibc."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def empty_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def is_oom_error(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower() and "cuda" in str(exc).lower())


def call_with_cpu_fallback(fn: Callable[[Any], Any], device, *, notify: Callable[[str], Any] | None = None):
    """Run ``fn(device)``; on a CUDA out-of-memory error empty the cache and run ``fn(cpu)`` instead.

    ``notify`` receives the message shown to the user (e.g. the progress callback's message or a log function).
    Other errors propagate unchanged.
    """
    import torch

    device = torch.device(device)
    try:
        return fn(device)
    except Exception as exc:  # noqa: BLE001 - filtered below
        if device.type != "cuda" or not is_oom_error(exc):
            raise
    empty_cache()
    message = "The GPU ran out of memory; continuing on the CPU (slower). Close other GPU programs to stay on the GPU."
    if notify is not None:
        notify(message)
    return fn(torch.device("cpu"))


@contextlib.contextmanager
def oom_guard(device, *, notify: Callable[[str], Any] | None = None):
    """Context manager that turns a CUDA out-of-memory error into :class:`GPUOutOfMemory` after freeing the cache.

    Use :func:`call_with_cpu_fallback` to re-run the step on the CPU; use this guard where the caller decides.
    """
    try:
        yield
    except Exception as exc:  # noqa: BLE001
        if not is_oom_error(exc):
            raise
        empty_cache()
        if notify is not None:
            notify("The GPU ran out of memory.")
        raise GPUOutOfMemory(f"GPU {device} ran out of memory; retry on the CPU (device='cpu') or with a "
                             f"smaller region.") from exc


class GPUOutOfMemory(HCCTwinError, RuntimeError):
    """Raised by :func:`oom_guard` after a CUDA out-of-memory error (the cache has been emptied)."""
