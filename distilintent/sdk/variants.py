"""Which exported variant of a bundle to serve.

``backend="auto"`` / ``precision="auto"`` take the first variant of :data:`AUTO_ORDER` that the bundle
has and whose runtime is installed: ``onnx-int8``, ``openvino-int8``, ``onnx-fp32``, ``openvino-fp32``.

Why (384-wide model, batch 1): INT8 beats FP32 on every CPU measured. ONNX Runtime's dynamic INT8
took half the CPU time of OpenVINO INT8 on an AVX2-only EPYC (``benchmarks/sdk_latency.py``; without
VNNI/AMX OpenVINO runs generic int8 GEMMs) and was on par with OpenVINO's static-shape INT8 on a Xeon
with AMX (1.6 vs 1.5 ms, measured by the project's runtime notes), while it starts about 3× faster (no
~0.4 s ``import openvino``) in half the memory: only ONNX Runtime meets the cold start ≤ 0.5 s and
RSS ≤ 200 MB targets. Pass ``backend="openvino"`` to prefer OpenVINO (e.g. on AMX servers that run
large batches, where it had the higher throughput).

A requested variant that the bundle lacks falls back, with a warning, to the nearest one that it has
(same backend first, then same precision).
"""

from __future__ import annotations

import importlib.util
import sys
import warnings

from distilintent.core.bundle import BACKENDS, PRECISIONS, Bundle, Variant
from distilintent.core.errors import BundleError, MissingExtraError

AUTO_ORDER: tuple[tuple[str, str], ...] = (
    ("onnxruntime", "int8"),
    ("openvino", "int8"),
    ("onnxruntime", "fp32"),
    ("openvino", "fp32"),
)
_RUNTIME_MODULES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}
_EXTRAS = {"onnxruntime": "pip install onnxruntime", "openvino": "pip install 'distilintent[openvino]'"}


def runtime_installed(backend: str) -> bool:
    """Whether the backend's module can be imported (checked without importing it)."""
    name = _RUNTIME_MODULES[backend]
    if name in sys.modules:
        return sys.modules[name] is not None
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def select_variant(bundle: Bundle, backend: str = "auto", precision: str = "auto") -> Variant:
    """The variant to serve for the requested backend and precision (see the module docstring)."""
    if backend not in ("auto", *BACKENDS):
        raise ValueError(f"backend must be 'auto', 'openvino' or 'onnxruntime', got {backend!r}")
    if precision not in ("auto", *PRECISIONS):
        raise ValueError(f"precision must be 'auto', 'int8' or 'fp32', got {precision!r}")
    variants = list(bundle.variants.values())
    if not variants:
        raise BundleError(
            f"{bundle.path} has no exported runtime model; run: distilintent export --model {bundle.path}"
        )
    by_key = {(v.backend, v.precision): v for v in variants}
    wanted = [key for key in AUTO_ORDER if backend in ("auto", key[0]) and precision in ("auto", key[1])]
    for key in wanted:
        if key in by_key:
            if runtime_installed(key[0]):
                return by_key[key]
            if backend != "auto":
                raise MissingExtraError(f"backend {key[0]!r} is not installed: {_EXTRAS[key[0]]}")
    available = [key for key in AUTO_ORDER if key in by_key and runtime_installed(key[0])]
    if not available:
        missing = sorted({v.backend for v in variants})
        raise MissingExtraError(
            f"{bundle.path} has variants for {', '.join(missing)} but no such runtime is installed: "
            + "; ".join(_EXTRAS[name] for name in missing)
        )
    # nearest available: same backend, then same precision, then the auto order
    available.sort(key=lambda key: (backend not in ("auto", key[0]), precision not in ("auto", key[1])))
    chosen = by_key[available[0]]
    warnings.warn(
        f"{bundle.path} has no {backend}/{precision} variant (has: {', '.join(sorted(v.name for v in variants))}); "
        f"using {chosen.name}. Export it with: distilintent export --model {bundle.path}",
        UserWarning,
        stacklevel=3,
    )
    return chosen
