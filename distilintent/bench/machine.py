"""What a benchmark ran on: CPU model, core count, ISA flags, OS, library versions and the load average.

Read without importing the libraries (``importlib.metadata``), so recording the machine never loads torch.
"""

from __future__ import annotations

import contextlib
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
             "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")
LIBRARIES = ("numpy", "tokenizers", "onnxruntime", "openvino", "torch", "transformers", "starlette", "uvicorn",
             "distilintent")


def machine() -> dict[str, Any]:
    """CPU model, core count, ISA flags, OS and library versions."""
    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                            "cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine()}
    with contextlib.suppress(AttributeError):
        info["cpus_usable"] = len(os.sched_getaffinity(0))
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        lines = cpuinfo.splitlines()
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
        flags = set(next(line for line in lines if line.startswith("flags")).split(":", 1)[1].split())
        info["isa"] = [flag for flag in ISA_FLAGS if flag in flags]
        info["has_avx512"] = "avx512f" in flags
        info["has_vnni"] = bool(flags & {"avx512_vnni", "avx_vnni"})
        info["has_amx"] = bool(flags & {"amx_int8", "amx_bf16", "amx_tile"})
        info["has_native_bf16"] = bool(flags & {"amx_bf16", "avx512_bf16"})
        cores = {line.split(":", 1)[1].strip() for line in lines if line.startswith("core id")}
        if cores:
            info["physical_cores_per_socket"] = len(cores)
    except (OSError, StopIteration):
        pass
    versions = {}
    for name in LIBRARIES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    info["libraries"] = versions
    return info


def load_average() -> list[float] | None:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None
