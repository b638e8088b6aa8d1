"""The error hierarchy: one root, each subclass carrying the HTTP status it maps to.

Messages name the field, what was expected and what arrived, so a caller can fix the input
without reading the source.
"""

from __future__ import annotations

from dataclasses import dataclass


class InsessionError(Exception):
    """Root of every error insession raises on purpose."""

    status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class FieldError:
    """One problem with one field of an input: where, what was expected, what arrived."""

    field: str
    expected: str
    got: str

    def __str__(self) -> str:
        return f"{self.field}: expected {self.expected}, got {self.got}"

    def to_dict(self) -> dict[str, str]:
        return {"field": self.field, "expected": self.expected, "got": self.got}


class ValidationError(InsessionError):
    """An input failed validation; ``errors`` lists every field at fault."""

    status = 422

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(str(e) for e in errors))
        self.errors = errors


class PayloadTooLarge(InsessionError):
    status = 413


class Overloaded(InsessionError):
    """More requests than the server can answer within budget: refused at once with Retry-After
    (an event batch refused this way was not written; retrying it is safe)."""

    status = 503


class Unauthorized(InsessionError):
    """The request lacks an API key allowed for what it asks (the message names the header)."""

    status = 401


class NotFound(InsessionError):
    status = 404


class Gone(InsessionError):
    """What was asked for existed and was erased on purpose (a forgotten user's manifests)."""

    status = 410


class ModelError(InsessionError):
    """A model directory is missing, incomplete or does not match its recorded version."""

    status = 500


class SnapshotCorrupt(InsessionError):
    """A store snapshot failed its checksum or could not be parsed; rebuild from the log."""

    status = 500


class CorruptRecord(InsessionError):
    """The event log holds a record that is not a valid event (an older version wrote it, or it was
    edited by hand): the message names its position, every field at fault and the record itself,
    and how to move it aside (``insession replay --quarantine``)."""

    status = 500

    def __init__(self, path: object, position: int, reasons: list[str], record: str) -> None:
        shown = record if len(record) <= 300 else record[:297] + "..."
        super().__init__(
            f"event log {path}: the record at position {position} is not a valid event: {'; '.join(reasons)}; "
            f"record: {shown!r}. Run `insession replay --quarantine` to move it to a side file."
        )
        self.position = position
        self.reasons = reasons
        self.record = record


class DataDirInUse(InsessionError):
    """Another process has the embedded event log open for writing."""

    status = 503


class Unsupported(InsessionError):
    """The operation exists but not with this configuration; the message says which."""

    status = 501


class StoreUnavailable(InsessionError):
    """The shared store (Redis) did not answer in time or refused the connection. Reads degrade to
    the ``popular`` tier; writes are refused with 503 so the caller retries (nothing is dropped
    silently: events already written are recognised by ``event_id`` on the retry)."""

    status = 503


class StorageFault(StoreUnavailable):
    """The local data directory refused a write (disk full, read-only, I/O error). An append that
    raises it stored nothing of its batch, so the caller retries (503 + Retry-After); ``/readyz``
    and ``/healthz`` report storage as down until writes succeed again."""


class RequestTimeout(InsessionError):
    """The client did not send the whole request body within ``body_timeout_ms`` (408)."""

    status = 408


class MissingExtra(InsessionError):
    """An optional backend was asked for but its extra is not installed."""

    status = 500

    def __init__(self, feature: str, extra: str) -> None:
        super().__init__(f"{feature} needs the optional extra '{extra}': pip install 'insession[{extra}]'")


def describe(value: object, limit: int = 60) -> str:
    """A short, safe rendering of a received value for an error message."""
    text = repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(value).__name__} {text}"
