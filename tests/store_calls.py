"""Counting a store's queries in tests that bound them (a walk or a finder must not query per node)."""

from __future__ import annotations

from typing import Any

import pytest


def record_calls(monkeypatch: pytest.MonkeyPatch, store: Any, method: str) -> list[dict[str, Any]]:
    """Wrap ``store.<method>`` so each call's keyword arguments are recorded; returns the record."""
    calls: list[dict[str, Any]] = []
    real = getattr(store, method)

    def recording(environment: str, **kw: Any) -> Any:
        calls.append(kw)
        return real(environment, **kw)

    monkeypatch.setattr(store, method, recording)
    return calls


def count_results(monkeypatch: pytest.MonkeyPatch, store: Any, method: str) -> list[int]:
    """Wrap ``store.<method>`` so the number of documents each call returns is recorded."""
    counts: list[int] = []
    real = getattr(store, method)

    def counting(environment: str, **kw: Any) -> Any:
        docs = real(environment, **kw)
        counts.append(len(docs))
        return docs

    monkeypatch.setattr(store, method, counting)
    return counts
