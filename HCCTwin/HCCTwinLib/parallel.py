"""Cohort work past one machine (issue 27): the per-patient steps of the batch commands mapped over Dask.

A site's study has thousands of patients; segmenting them, reading their follow-ups and building the feature table
one after the other on one machine takes days. The batch commands (``hcctwin evaluate``, ``hcctwin study``,
``hcctwin train survival`` and the cohort feature table behind them) take ``--scheduler``:

* ``serial`` (default): one patient after the other in this process (no Dask needed);
* ``local``: a Dask ``LocalCluster`` on this machine with ``--workers`` processes (one torch thread each);
* ``distributed://HOST:PORT`` (or ``tcp://HOST:PORT``): an existing Dask scheduler, e.g. started on a cluster with
  ``dask scheduler`` and ``dask worker tcp://HOST:8786 --nthreads 1`` on every node (the nodes need HCCTwin and its
  models installed, and the cohort folder at the same path, e.g. on a shared file system).

Results come back in the order of the input, whatever the order they finish in, so a parallel run gives the same
table as the serial one. Each task is a module-level function with plain arguments (paths, strings): the models are
loaded on the worker (once per worker process, :mod:`HCCTwinLib.weights.cache`), never pickled.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .errors import InputError
from .progress import ProgressCallback, report

SCHEDULER_HELP = ("where per-patient work runs: serial (default, this process), local (a Dask LocalCluster on this "
                  "machine, --workers processes) or distributed://HOST:PORT (an existing Dask scheduler)")


def parse_scheduler(spec: str | None) -> tuple[str, str | None]:
    """``("serial" | "local" | "distributed", address or None)`` of a ``--scheduler`` value."""
    text = (spec or "serial").strip()
    if text in ("serial", "local"):
        return text, None
    for prefix in ("distributed://", "tcp://"):
        if text.startswith(prefix) and len(text) > len(prefix):
            host_port = text[len(prefix):]
            host, _, port = host_port.rpartition(":")
            if host and port.isdigit():
                return "distributed", f"tcp://{host_port}"
    raise InputError(f"--scheduler {spec!r}: use serial, local or distributed://HOST:PORT (a Dask scheduler).")


def _dask():
    try:
        import distributed
    except ImportError as exc:
        raise InputError("--scheduler local/distributed needs Dask: pip install 'hcctwin[cluster]' (dask, "
                         "distributed).") from exc
    return distributed


def _probe(address: str, timeout: float = 5.0) -> None:
    """Open and close a TCP connection to ``tcp://HOST:PORT`` (OSError when nothing listens there)."""
    import socket

    host, _, port = address.removeprefix("tcp://").rpartition(":")
    with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
        pass


@contextlib.contextmanager
def client_for(spec: str | None, workers: int | None = None) -> Iterator[Any]:
    """A Dask client for ``spec`` (None for serial); a local cluster is started and closed with the block."""
    kind, address = parse_scheduler(spec)
    if kind == "serial":
        yield None
        return
    distributed = _dask()
    if kind == "local":
        n = int(workers or os.cpu_count() or 1)
        if n < 1:
            raise InputError(f"--workers {workers}: at least 1.")
        with distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                                      silence_logs=40) as cluster, distributed.Client(cluster) as client:
            yield client
        return
    try:
        _probe(address)  # a refused or unreachable port fails here at once, not after Dask's 30 s of retries
        client = distributed.Client(address, timeout=30)
    except OSError as exc:
        raise InputError(f"--scheduler {spec}: no Dask scheduler answers at {address} ({exc}).") from exc
    try:
        yield client
    finally:
        client.close()


def _in_worker(fn: Callable[..., Any], item: Any, threads: int) -> Any:
    """One task on a worker: torch on ``threads`` threads (a worker process per core, not a core per thread)."""
    try:
        import torch

        torch.set_num_threads(max(1, int(threads)))
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return fn(*item) if isinstance(item, tuple) else fn(item)


def map_ordered(fn: Callable[..., Any], items: Sequence[Any], *, scheduler: str | None = "serial",
                workers: int | None = None, client=None, progress: ProgressCallback | None = None,
                what: str = "patient") -> list[Any]:
    """``[fn(item) for item in items]`` (a tuple item is spread as arguments), run by ``scheduler`` (or an open
    ``client``); the results in the order of ``items``. ``fn`` must be a module-level function (it is sent to the
    workers by name). An exception in one task is raised here, as in the serial loop."""
    items = list(items)
    if not items:
        return []
    if client is None and parse_scheduler(scheduler)[0] == "serial":
        out = []
        for n, item in enumerate(items):
            out.append(fn(*item) if isinstance(item, tuple) else fn(item))
            report(progress, (n + 1) / len(items), f"{what} {n + 1}/{len(items)}")
        return out
    if client is None:
        with client_for(scheduler, workers) as own:
            return map_ordered(fn, items, client=own, progress=progress, what=what)
    distributed = _dask()
    futures = client.map(_in_worker, [fn] * len(items), items, [1] * len(items), pure=False)
    index = {f.key: n for n, f in enumerate(futures)}
    results: list[Any] = [None] * len(items)
    try:
        for done, future in enumerate(distributed.as_completed(futures), start=1):
            results[index[future.key]] = future.result()
            report(progress, done / len(items), f"{what} {done}/{len(items)} (Dask)")
    finally:
        client.cancel(futures)
    return results


__all__ = ["SCHEDULER_HELP", "client_for", "map_ordered", "parse_scheduler"]
