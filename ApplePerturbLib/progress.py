"""Progress reporting for long commands: a terminal bar, JSON lines, or nothing.

The JSON-lines form is the protocol background front ends (the Slicer module)
read: one object per line on stdout, each with an ``event`` key: ``start``,
``encode`` (images encoded so far), ``epoch``, ``done`` and ``error``.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any, TextIO


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class Reporter:
    """Silent reporter; the base of the other two."""

    def event(self, name: str, **fields: Any) -> None:
        """Report one event; ``fields`` must be JSON-serialisable."""

    def steps(self, description: str, done: int, total: int) -> None:
        """Report ``done`` of ``total`` steps of a phase."""

    def close(self) -> None:
        """Finish any open display."""


class JsonLinesReporter(Reporter):
    """Writes one JSON object per event to ``stream`` (stdout by default) and flushes it."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stdout

    def event(self, name: str, **fields: Any) -> None:
        payload = {"event": name, **{key: _clean(value) for key, value in fields.items()}}
        self.stream.write(json.dumps(payload) + "\n")
        self.stream.flush()

    def steps(self, description: str, done: int, total: int) -> None:
        self.event("progress", phase=description, done=done, total=total)


class BarReporter(Reporter):
    """Shows tqdm bars on stderr and prints epoch summaries."""

    def __init__(self):
        self._bar = None
        self._description = None

    def event(self, name: str, **fields: Any) -> None:
        if name == "epoch":
            self.close()
            parts = [f"{key} {value:.4f}" for key, value in fields.items()
                     if isinstance(value, float) and key not in ("seconds",)]
            print(f"epoch {fields['epoch']}/{fields['epochs']}: " + ", ".join(parts), file=sys.stderr)

    def steps(self, description: str, done: int, total: int) -> None:
        from tqdm import tqdm

        if self._bar is None or self._description != description:
            self.close()
            self._bar = tqdm(total=total, desc=description, unit="img", file=sys.stderr, leave=False)
            self._description = description
        self._bar.n = done
        self._bar.refresh()
        if done >= total:
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            self._description = None


def make_reporter(kind: str) -> Reporter:
    """Return the reporter for ``--progress``: "bar" (default on a terminal), "jsonl" or "none"."""
    if kind == "jsonl":
        return JsonLinesReporter()
    if kind == "bar" or (kind == "auto" and sys.stderr.isatty()):
        return BarReporter()
    return Reporter()
