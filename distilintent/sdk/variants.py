"""Which exported variant of a bundle to serve.

``backend="auto"`` / ``precision="auto"`` take the first variant of :data:`AUTO_ORDER` that the bundle
has and whose runtime is installed: ``onnx-int8``, ``openvino-int8``, ``onnx-fp32``, ``openvino-fp32``.

Why (384-wide model, batch 1): INT8 beats FP32 on every CPU measured. ONNX Runtime's dynamic INT8
took half the CPU time of OpenVINO INT8 on an AVX2-only EPYC (4.93 vs 12.23 ms at 1 thread,
``distilintent bench``, ``benchmarks/results/results.md``; without
VNNI/AMX OpenVINO runs generic int8 GEMMs). On a Xeon with AVX-512 VNNI and AMX
(``benchmarks/int8_variants.py``, ``benchmarks/results/int8_variants.md``, CLINC150, 1 thread) ONNX
Runtime's INT8 of the fused graph (``onnx-int8``) had p50/p99 1.34/2.16 ms, OpenVINO's static-shape
INT8 1.17/5.28 ms (FP32: ORT fused 3.67/5.93, OpenVINO 5.65/10.25): OpenVINO's median is 13 % lower,
its tail 2.4× longer. ONNX Runtime also starts about 3× faster (no ~0.4 s ``import openvino``) in half
the memory: only it meets the cold start ≤ 0.5 s and RSS ≤ 200 MB targets. Pass
``backend="openvino"`` to prefer OpenVINO (e.g. on AMX servers that run large batches, where it had
the higher throughput).

A requested variant that the bundle lacks falls back, with a warning, to the nearest one that it has
(same backend first, then same precision). A variant is unusable when its runtime is not installed or
its file (or OpenVINO weights) is missing from the bundle directory although the manifest lists it:
``auto`` then serves the next usable variant and warns why it skipped the better one. A variant
named exactly (``backend`` and ``precision`` both given) whose file is missing raises
:class:`~distilintent.core.errors.BundleError`, an explicit ``backend`` that is not installed raises
:class:`~distilintent.core.errors.MissingExtraError`, and so does a bundle with no usable variant. A
file that is present but does not match its sha256 is never skipped: loading it fails.
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


def missing_files(bundle: Bundle, variant: Variant) -> list[str]:
    """The variant's files that the manifest lists but the bundle directory lacks."""
    files = [variant.file] + ([variant.weights] if variant.weights else [])
    return [name for name in files if not (bundle.path / name).is_file()]


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
    skipped: dict[tuple[str, str], str] = {}  # unusable variant -> why
    for key in AUTO_ORDER:
        if key not in by_key:
            continue
        gone = missing_files(bundle, by_key[key])
        if gone:
            skipped[key] = f"{', '.join(str(bundle.path / name) for name in gone)} missing"
        elif not runtime_installed(key[0]):
            skipped[key] = f"{key[0]} not installed ({_EXTRAS[key[0]]})"
    wanted = [key for key in AUTO_ORDER if backend in ("auto", key[0]) and precision in ("auto", key[1])]
    for key in wanted:
        if key not in by_key:
            continue
        if key not in skipped:
            if skipped:
                _warn(bundle, skipped, wanted, by_key[key])
            return by_key[key]
        if key[0] == backend and (precision == key[1] or not runtime_installed(key[0])):
            if runtime_installed(key[0]):
                raise BundleError(f"variant {by_key[key].name} of {bundle.path} is damaged: {skipped[key]}; "
                                  f"re-export it: distilintent export --model {bundle.path}")
            raise MissingExtraError(f"backend {key[0]!r} is not installed: {_EXTRAS[key[0]]}")
    available = [key for key in AUTO_ORDER if key in by_key and key not in skipped]
    if not available:
        if all(not runtime_installed(key[0]) for key in skipped):
            missing = sorted({v.backend for v in variants})
            raise MissingExtraError(
                f"{bundle.path} has variants for {', '.join(missing)} but no such runtime is installed: "
                + "; ".join(_EXTRAS[name] for name in missing)
            )
        raise BundleError(f"{bundle.path} has no usable runtime variant: "
                          + "; ".join(f"{by_key[key].name}: {why}" for key, why in skipped.items()))
    # nearest available: same backend, then same precision, then the auto order
    available.sort(key=lambda key: (backend not in ("auto", key[0]), precision not in ("auto", key[1])))
    chosen = by_key[available[0]]
    warnings.warn(
        f"{bundle.path} has no {backend}/{precision} variant (has: {', '.join(sorted(v.name for v in variants))}); "
        f"using {chosen.name}. Export it with: distilintent export --model {bundle.path}"
        + "".join(f"; skipped {by_key[key].name}: {why}" for key, why in skipped.items()),
        UserWarning,
        stacklevel=3,
    )
    return chosen


def _warn(bundle: Bundle, skipped: dict[tuple[str, str], str], wanted: list[tuple[str, str]],
          chosen: Variant) -> None:
    """Warn when a wanted variant that comes before ``chosen`` was skipped as unusable."""
    better = [key for key in wanted[: wanted.index((chosen.backend, chosen.precision))] if key in skipped]
    if better:
        reasons = "; ".join(f"{key[0]}/{key[1]}: {skipped[key]}" for key in better)
        warnings.warn(f"{bundle.path}: skipped unusable variant(s) ({reasons}); using {chosen.name}",
                      UserWarning, stacklevel=4)
