"""Errors the SDK raises, one type per thing a caller may want to handle differently.

A notebook user catches `JobFailedError` to read why training failed; the CLI maps each type onto an
exit code. Every error carries the job's name, so a message printed on its own still says which job,
and every error is a `TransferJobError`, so one `except` catches whatever the SDK raises. An error
raised because of another (an API response, a pydantic validation error) keeps it as `__cause__`.

`SpecWarning` is not an error: a spec that is valid but will not do what it is for is submitted, with a
Python warning (`warnings.warn`), as the API server answers with a warning that kubectl prints.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transferjob.models import TransferJob


class TransferJobError(Exception):
    """Base of every SDK error: `except TransferJobError` catches all of them."""


class SpecError(TransferJobError, ValueError):
    """A spec that cannot run, with one line per problem, each naming the field (camelCase path).

    Also a `ValueError`, so code that validates input the standard way catches it too.
    """

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class SpecWarning(UserWarning):
    """A valid spec that will not do what it is for (an untrained base, say): submitted anyway.

    `reason` is CamelCase (the operator posts it as a Warning Event on the TransferJob), `field` the wire
    path of the field to change. Given with `warnings.warn`, so it shows in a notebook, `tj` prints it
    on stderr, and `warnings.simplefilter("error", SpecWarning)` turns it into a refusal.
    """

    def __init__(self, reason: str, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.reason = reason
        self.field = field
        self.message = message


class BackendError(TransferJobError):
    """The backend cannot do what was asked: no kubeconfig, cluster unreachable, API refused, ..."""


class JobNotFoundError(TransferJobError, LookupError):
    """No TransferJob of that name (it was never created, or it was deleted while being watched)."""

    def __init__(self, name: str, namespace: str | None = None) -> None:
        where = f" in namespace {namespace!r}" if namespace else ""
        super().__init__(f"TransferJob {name!r} not found{where}")
        self.name = name
        self.namespace = namespace


class NamespaceNotFoundError(BackendError, LookupError):
    """The namespace the client works in does not exist (a typo in `-n`, or a context's stale default)."""

    def __init__(self, namespace: str) -> None:
        super().__init__(f"namespace {namespace!r} does not exist")
        self.namespace = namespace


class JobExistsError(TransferJobError):
    """A TransferJob of that name exists already; names are unique per namespace (or TJ_HOME)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"TransferJob {name!r} already exists; delete it or choose another name")
        self.name = name


class JobFailedError(TransferJobError):
    """The job ended in phase Failed. `reason` is machine-readable (InvalidData, OOMKilled, ...)."""

    def __init__(self, job: TransferJob, reason: str, message: str) -> None:
        name = job.metadata.name or "?"
        super().__init__(f"TransferJob {name!r} failed: {reason}: {message}" if message else reason)
        self.name = name
        self.reason = reason
        self.message = message
        self.job = job


class JobTimeoutError(TransferJobError, TimeoutError):
    """`wait`/`watch` gave up before the job reached the phase asked for; the job keeps running."""

    def __init__(self, name: str, timeout: float, phase: str | None) -> None:
        super().__init__(
            f"TransferJob {name!r} did not finish within {timeout:g}s (phase: {phase or 'unknown'})"
        )
        self.name = name
        self.timeout = timeout
        self.phase = phase


class JobNotReadyError(TransferJobError):
    """An operation needs a finished job (e.g. fine-tuning its model locally) and it is not one yet."""


class ModelNotServableError(TransferJobError):
    """A finished job's model cannot go where it was asked to: it exported no SavedModel, or its output
    location is one a server (or this machine, for `tj predict`) cannot read."""


class SweepNotFoundError(TransferJobError, LookupError):
    """No TransferSweep of that name in the namespace (or, locally, on this machine)."""

    def __init__(self, name: str, namespace: str | None = None) -> None:
        where = f" in namespace {namespace!r}" if namespace else ""
        super().__init__(f"TransferSweep {name!r} not found{where}")
        self.name = name


class SweepFailedError(TransferJobError):
    """The sweep ended in phase Failed (too many failed trials, or none succeeded)."""

    def __init__(self, name: str, reason: str, message: str) -> None:
        super().__init__(f"TransferSweep {name!r} failed: {reason}: {message}")
        self.name = name
        self.reason = reason
        self.message = message


class SweepExistsError(TransferJobError):
    """A TransferSweep of that name exists already."""

    def __init__(self, name: str) -> None:
        super().__init__(f"TransferSweep {name!r} already exists; delete it or choose another name")
        self.name = name


class OutputUnreadableError(TransferJobError):
    """A finished job's output folder cannot be read here (`tj report`): it is on a volume only the
    cluster mounts, in an object store, or gone; the message names the location and why."""
