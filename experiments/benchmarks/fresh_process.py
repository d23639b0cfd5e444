"""Benchmarks that time one setting per fresh process (no compilation cache, no warm allocator): the child prints
one `RESULT {json}` line (emit), the parent runs it and reads that line back (child_result)."""

from __future__ import annotations

import json
import subprocess
import sys

PREFIX = "RESULT "


def emit(row: dict) -> None:
    """The child's measurement, as the one line child_result reads."""
    print(PREFIX + json.dumps(row), flush=True)


def child_result(script: str, *args: str) -> dict:
    """Runs `python script *args` in a fresh process and returns the row it emitted; a failed child raises."""
    done = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, check=True)
    line = next(x for x in done.stdout.splitlines() if x.startswith(PREFIX))
    return json.loads(line[len(PREFIX) :])
