"""Where a model runs and how it is kept: device, precision, torch threads, per-process cache.

On a Spark executor with GPUs, `auto` means the GPU Spark assigned this task
(`TaskContext.resources()["gpu"]`), so tasks sharing a machine never pile onto GPU 0.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from laion_spark.settings import require

T = TypeVar("T")

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


def valid_device(device: str) -> bool:
    return device in ("auto", "cpu", "cuda") or device.startswith("cuda:")


def require_device(device: str, key: str) -> None:
    """Config check of a `device` setting; the error names the dotted `key`."""
    require(valid_device(device), key, f"must be {DEVICE_CHOICES}, not {device!r}")


def require_precision(precision: str, key: str) -> None:
    """Config check of a `precision` setting (see resolve_precision)."""
    require(
        precision in ("auto", "fp32", "fp16", "bf16"),
        key,
        f"must be auto, fp32, fp16 or bf16, not {precision!r}",
    )


def resolve_device(wanted: str | None) -> str:
    """auto -> the GPU Spark assigned this task, else any GPU, else cpu; a configured cuda
    device the executor does not have falls back to cpu."""
    import torch

    wanted = wanted or "auto"
    if wanted != "auto":
        if wanted.startswith("cuda") and not torch.cuda.is_available():
            return "cpu"
        return wanted
    if not torch.cuda.is_available():
        return "cpu"
    try:
        from pyspark import TaskContext

        tc = TaskContext.get()
        gpus = tc.resources().get("gpu") if tc is not None else None
        if gpus is not None and gpus.addresses:
            return f"cuda:{int(gpus.addresses[0])}"
    except Exception:
        pass
    return "cuda"


def resolve_precision(precision: str, device: str) -> str:
    """auto -> fp16 on cuda, fp32 on cpu (half-precision matmuls on CPU are slow)."""
    if precision == "auto":
        return "fp16" if device.startswith("cuda") else "fp32"
    if not device.startswith("cuda") and precision != "fp32":
        return "fp32"
    return precision


def set_torch_threads(configured: int, device: str) -> None:
    """On CPU, use the task's cores (spark.task.cpus) unless `configured` > 0 says otherwise."""
    import torch

    if not device.startswith("cpu"):
        return
    n = configured
    if n <= 0:
        try:
            from pyspark import TaskContext

            tc = TaskContext.get()
            n = tc.cpus() if tc is not None else 0
        except Exception:
            n = 0
    if n > 0 and torch.get_num_threads() != n:
        torch.set_num_threads(n)


_CACHE: dict[tuple, Any] = {}
_LOCK = threading.RLock()


def cached(key: tuple, make: Callable[[], T]) -> T:
    """`make()` once per process for `key` (thread-safe; Spark reuses Python workers)."""
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = make()
        return _CACHE[key]


def file_key(path: str | None) -> tuple[str, float]:
    """(path, mtime): a cache key part that changes when the file is rewritten."""
    if not path:
        return ("", -1.0)
    try:
        return (path, os.path.getmtime(os.path.expanduser(path)))
    except OSError:
        return (path, -1.0)
