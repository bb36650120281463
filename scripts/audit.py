"""Known vulnerabilities in the installed dependencies: ``pip-audit`` over this environment, summarised.

    .venv/bin/python scripts/audit.py                        # print the summary (what scripts/test.sh runs)
    .venv/bin/python scripts/audit.py --out docs/pip-audit.md  # also write it (the committed record)

pip-audit asks PyPI's JSON API (``/pypi/<name>/<version>/json``) for each installed distribution; a package
it cannot look up is *skipped*, and pip-audit still says "No known vulnerabilities found". This script counts
the skipped ones, so an audit that could not reach the database is reported as such, not as clean.

Exit codes: 0 every package audited, no known vulnerability; 1 vulnerabilities found; 2 the audit could
not run or skipped packages (no network, no pip-audit).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any


def run_pip_audit(service: str, timeout: float) -> tuple[dict[str, Any] | None, str, str]:
    """pip-audit's JSON report of this interpreter's environment (None if it failed), its version, stderr."""
    executable = Path(sys.executable).with_name("pip-audit")
    command = [str(executable)] if executable.exists() else [shutil.which("pip-audit") or "pip-audit"]
    try:
        version = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=60).stdout.strip()
        done = subprocess.run([*command, "--progress-spinner", "off", "--skip-editable", "-f", "json", "--desc", "on",
                               "-s", service, "--timeout", "30"], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as err:
        return None, "", f"{type(err).__name__}: {err}"
    try:
        return json.loads(done.stdout), version, done.stderr
    except json.JSONDecodeError:
        return None, version, (done.stderr or done.stdout)[-2000:]


def summarise(report: dict[str, Any] | None, version: str, service: str, error: str) -> tuple[str, int]:
    today = dt.date.today().isoformat()
    lines = [f"# pip-audit of the installed dependencies ({today})", "",
             f"`{version or 'pip-audit'}`, vulnerability service `{service}`, over the environment that "
             "`scripts/setup.sh` builds (all extras but rasa), editable distilintent itself skipped.", ""]
    if report is None:
        lines += ["**Not audited**: pip-audit did not run.", "", "```", error.strip()[-1500:], "```", ""]
        return "\n".join(lines), 2
    dependencies = report.get("dependencies", [])
    skipped = [d for d in dependencies if d.get("skip_reason")]
    audited = [d for d in dependencies if not d.get("skip_reason")]
    vulnerable = [d for d in audited if d.get("vulns")]
    count = sum(len(d["vulns"]) for d in vulnerable)
    if audited:
        lines.append(f"{len(dependencies)} distributions: {len(audited)} audited, {len(skipped)} skipped; "
                     f"**{count} known vulnerabilities** in {len(vulnerable)} of them.")
    else:
        lines.append(f"{len(dependencies)} distributions, **none audited**: the vulnerability service answered for "
                     "no package (no network, or an index mirror without PyPI's per-version JSON API). "
                     "This is not a clean result; run it where pypi.org (or api.osv.dev: `--service osv`) "
                     "is reachable.")
    lines.append("")
    if vulnerable:
        lines += ["| package | version | vulnerability | fixed in |", "|---|---|---|---|"]
        for dep in vulnerable:
            for vuln in dep["vulns"]:
                ids = ", ".join([vuln["id"], *vuln.get("aliases", [])])
                fixed = ", ".join(vuln.get("fix_versions", []))
                lines.append(f"| {dep['name']} | {dep['version']} | {ids} | {fixed} |")
        lines.append("")
    if skipped:
        reasons: dict[str, list[str]] = {}
        for dep in skipped:
            reason = dep["skip_reason"].split(":")[0]
            reasons.setdefault(reason, []).append(dep["name"])
        lines.append("Skipped (not audited):")
        lines.append("")
        lines += [f"- {reason}: {len(names)} ({', '.join(names[:8])}{', …' if len(names) > 8 else ''})"
                  for reason, names in reasons.items()]
        lines.append("")
    code = 1 if vulnerable else 2 if skipped or not audited else 0
    return "\n".join(lines), code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="also write the summary (Markdown) here")
    parser.add_argument("--service", default="pypi", choices=("pypi", "osv"))
    parser.add_argument("--timeout", type=float, default=600, help="seconds for the whole audit")
    args = parser.parse_args(argv)
    report, version, error = run_pip_audit(args.service, args.timeout)
    summary, code = summarise(report, version, args.service, error)
    print(summary)
    if args.out:
        args.out.write_text(summary.rstrip("\n") + "\n")
    if code == 1:
        print("WARNING: pip-audit found known vulnerabilities (see above)", file=sys.stderr)
    elif code == 2:
        print("WARNING: pip-audit could not audit every dependency (no network or no vulnerability API); "
              "this is not a clean result", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
