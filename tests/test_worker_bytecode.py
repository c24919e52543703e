"""The worker writes the bytecode of the workflow modules the sandbox re-imports for every workflow run, even with
bytecode writing off (PYTHONDONTWRITEBYTECODE): otherwise each run compiles them from source."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import workflows.work_order
from worker import cache_bytecode


def test_the_worker_caches_the_workflow_modules_bytecode(monkeypatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # as under PYTHONDONTWRITEBYTECODE=1
    source = workflows.work_order.__file__
    cached = Path(importlib.util.cache_from_source(source))
    cached.unlink(missing_ok=True)
    cache_bytecode()
    assert cached.exists()
    # what the sandbox's importer then does: the loader takes the bytecode instead of compiling the source
    loader = importlib.util.find_spec("workflows.work_order").loader
    calls = []
    monkeypatch.setattr(loader, "source_to_code", lambda *a, **k: calls.append(a) or compile(*a[:2], "exec"))
    assert loader.get_code("workflows.work_order") is not None
    assert calls == []
