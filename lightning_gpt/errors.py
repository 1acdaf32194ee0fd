"""Exceptions of lightning-gpt that callers may want to catch (importable without Lightning)."""

from __future__ import annotations

__all__ = ["NonFiniteError"]


class NonFiniteError(RuntimeError):
    """Raised by ``NonFiniteGuard`` when training produced NaN/inf (policy ``stop``) or a checkpoint would hold it."""
