"""What the pass/fail scripts in ``benchmarks/`` (``sdk_soak.py``, ``server_load.py``) share: their common
arguments, the machine and command recorded in each report, and writing ``<name>.json`` and ``<name>.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distilintent.bench.machine import load_average, machine

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def script_parser(doc: str, name: str) -> argparse.ArgumentParser:
    """A parser with the bundle, ``--data``/``--split``, ``--max-rss-growth-pct``, ``--out`` and ``--name``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--data", type=Path,
                        help="JSONL/CSV with a text field, or one text per line (default: the bundle's samples)")
    parser.add_argument("--split", help="only rows of this split (e.g. validation)")
    parser.add_argument("--max-rss-growth-pct", type=float, default=5.0,
                        help="fail when RSS grows more than this after the warm-up (default 5)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="output directory (default benchmarks/results)")
    parser.add_argument("--name", default=name, help=f"file name stem of the results (default {name})")
    return parser


def machine_summary(report: dict[str, Any]) -> str:
    """One Markdown line from a report's ``date``, ``machine`` and ``load_average_after``."""
    info = report["machine"]
    return (f"{report['date']} · {info.get('cpu', '?')}, {info.get('cpus', '?')} logical CPUs "
            f"({info.get('cpus_usable', '?')} usable), ISA: {', '.join(info.get('isa', []))} · "
            f"load average after: {report['load_average_after']}")


def write_report(report: dict[str, Any], to_markdown: Callable[[dict[str, Any]], str], out: Path, name: str) -> None:
    """Add ``machine``, ``load_average_after`` and ``command`` to ``report``, then write ``<out>/<name>.json``
    and ``<out>/<name>.md`` (``to_markdown(report)``, printed too)."""
    report.update(machine=machine(), load_average_after=load_average(),
                  command=" ".join([Path(sys.executable).name, *sys.argv]))
    markdown = to_markdown(report)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    (out / f"{name}.md").write_text(markdown)
    print(markdown)
