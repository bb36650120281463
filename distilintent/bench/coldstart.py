"""Cold start of one benchmark row in a fresh interpreter: import + load + first result, then peak RSS.

    python -m distilintent.bench.coldstart KIND BUNDLE BACKEND PRECISION THREADS SHAPES TEXT

KIND is ``sdk``, ``torch`` or ``pipeline``; THREADS is ``0`` for the runtime's default; SHAPES is
``dynamic`` for an OpenVINO row without static buckets, else ``static`` or ``-``. Prints one JSON
line. Run by :func:`distilintent.bench.timing.cold_start`.
"""

import time

T0 = time.perf_counter()

import json  # noqa: E402
import sys  # noqa: E402


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main(argv: list[str]) -> None:
    kind, bundle, backend, precision, threads_arg, shapes, text = argv
    threads = int(threads_arg) or None
    from distilintent.bench.subjects import build_subject  # light: the heavy imports happen in build_subject

    t1 = time.perf_counter()
    subject = build_subject(kind, bundle, backend, precision, threads, None if shapes == "-" else shapes)
    t2 = time.perf_counter()
    subject.detect(text)
    t3 = time.perf_counter()
    for i in range(50):  # steady state: RSS after some traffic, batches included
        subject.detect(text if i % 2 else "hi")
    subject.detect_batch([text] * 32, batch_size=32)
    print(json.dumps({"import_s": t1 - T0, "load_s": t2 - t1, "first_result_s": t3 - t2, "cold_start_s": t3 - T0,
                      "rss_mb": _status_mb("VmRSS"), "peak_rss_mb": _status_mb("VmHWM"),
                      "torch_imported": "torch" in sys.modules}))


if __name__ == "__main__":
    main(sys.argv[1:])
