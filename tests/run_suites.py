"""Run the whole suite on PostgreSQL and on SQLite (what `make test` calls).

    .venv/bin/python tests/run_suites.py [pytest arguments...]

The two runs are independent (each has its own PostgreSQL database `<name>_<pid>` or SQLite file, its own Temporal
dev server, ERP simulator, peers and worker, all on free ports), and each spends about a third of its time waiting
on servers and timers, so by default they run side by side: on two cores that takes about half the time of one
after the other. Each run's output goes to `var/test-logs/<backend>.log`; a progress line is printed every
`HUB_TEST_PROGRESS_S` seconds (60), then each log in full as its run ends. The exit status is non-zero if either run
failed.

HUB_TEST_SERIAL=1 runs them one after the other with their output straight to the terminal (a machine with one
core, or to watch one run). HUB_TEST_BACKENDS=postgresql (or sqlite) runs one of them.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("postgresql", "sqlite")
_PERCENT = re.compile(rb"\[\s*(\d+)%\]")


def _command(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "pytest", "-q", *args]


def _env(backend: str) -> dict[str, str]:
    return {**os.environ, "HUB_TEST_DB": backend}


def _progress(log: Path) -> str:
    try:
        with log.open("rb") as f:
            f.seek(max(0, log.stat().st_size - 4096))
            tail = f.read()
    except OSError:
        return "starting"
    found = _PERCENT.findall(tail)
    return f"{int(found[-1])}%" if found else "starting"


def serial(backends: list[str], args: list[str]) -> int:
    rc = 0
    for b in backends:
        print(f"== {b} ==", flush=True)
        rc = max(rc, subprocess.call(_command(args), cwd=ROOT, env=_env(b)))
    return rc


def parallel(backends: list[str], args: list[str]) -> int:
    logs = ROOT / "var" / "test-logs"
    logs.mkdir(parents=True, exist_ok=True)
    every = float(os.environ.get("HUB_TEST_PROGRESS_S", "60"))
    runs: dict[str, tuple[subprocess.Popen[bytes], Path, float]] = {}
    for b in backends:
        log = logs / f"{b}.log"
        (logs / f"replay-{b}.txt").unlink(missing_ok=True)  # the session's replay of its workflows writes it anew
        with log.open("wb") as out:  # the child keeps its own handle
            p = subprocess.Popen(_command(args), cwd=ROOT, env=_env(b), stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        runs[b] = (p, log, time.monotonic())
        print(f"{b}: started (pid {p.pid}), output in {log.relative_to(ROOT)}", flush=True)

    def stop(*_: object) -> None:
        for p, _log, _t in runs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        raise SystemExit(130)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    rc, pending, next_line = 0, dict(runs), time.monotonic() + every
    while pending:
        time.sleep(1)
        for b, (p, log, started) in list(pending.items()):
            code = p.poll()
            if code is None:
                continue
            del pending[b]
            rc = max(rc, code)
            print(f"\n== {b}: {'passed' if code == 0 else f'FAILED (exit {code})'} in "
                  f"{time.monotonic() - started:.0f} s; its output ==", flush=True)
            sys.stdout.buffer.write(log.read_bytes())
            replayed = logs / f"replay-{b}.txt"  # tests/conftest.py: replay_suite_workflows
            if replayed.exists():
                print(f"{b}: {replayed.read_text().strip()}")
            sys.stdout.flush()
        if pending and time.monotonic() >= next_line:
            next_line += every
            print("  ".join(f"{b}: {_progress(log)}" for b, (_p, log, _t) in pending.items()), flush=True)
    return rc


def main() -> int:
    args = sys.argv[1:]
    backends = [b.strip() for b in os.environ.get("HUB_TEST_BACKENDS", ",".join(BACKENDS)).split(",") if b.strip()]
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown:
        print(f"HUB_TEST_BACKENDS: unknown {', '.join(unknown)}; use postgresql, sqlite or both", file=sys.stderr)
        return 2
    if os.environ.get("HUB_TEST_SERIAL", "") not in ("", "0") or len(backends) == 1:
        return serial(backends, args)
    return parallel(backends, args)


if __name__ == "__main__":
    sys.exit(main())
