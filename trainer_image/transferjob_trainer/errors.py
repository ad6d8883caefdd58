"""Why a run failed, in the terms the operator acts on.

A permanent error (bad spec, bad data, an output location another job owns) fails the TransferJob at
once with exit code `EXIT_PERMANENT`; anything else exits 1 and the Job's backoff retries it, resuming
from the last checkpoint.
"""

from __future__ import annotations

import threading
from types import FrameType

from transferjob.errors import TransferJobError


class TrainerError(TransferJobError):
    """A failure with a machine-readable reason; retryable unless a subclass says otherwise.

    A `TransferJobError` like every error of the project, so one `except` catches any of them.
    """

    reason = "TrainingError"
    permanent = False


class InvalidSpecError(TrainerError):
    """The spec (or a flag) cannot run as written; fixing it needs a new TransferJob."""

    reason = "InvalidSpec"
    permanent = True


class InvalidDataError(TrainerError):
    """Missing, empty or corrupt data; the message names the folder or file."""

    reason = "InvalidData"
    permanent = True


class StorageError(TrainerError):
    """An object-store location could not be used: `problem` says why, in the words a user acts on.

    `not found` (a missing object, folder or bucket), `access denied` (wrong or missing credentials, no
    permission) or `endpoint unreachable` (the endpoint is named). Permanent: a retry of the same pod
    meets the same bucket with the same credentials, and a retry loop would hide the cause.
    """

    reason = "StorageError"
    permanent = True

    def __init__(self, uri: str, problem: str, detail: str = "") -> None:
        super().__init__(f"{uri}: {problem}" + (f" ({detail})" if detail else ""))
        self.uri = uri
        self.problem = problem


class OutputInUseError(TrainerError):
    """The output location is owned by another TransferJob (its `owner.json`, see `ownership`): writing
    there would overwrite or silently resume from that job's model. Permanent: every retry of this job
    meets the same record."""

    reason = "OutputInUse"
    permanent = True

    def __init__(self, location: str, owner: str) -> None:
        super().__init__(
            f"output location {location} is owned by {owner}, whose model and checkpoints are there; "
            "choose another output location, or create this TransferJob again with "
            "spec.output.ownershipPolicy: Adopt to continue from them"
        )
        self.location = location
        self.owner = owner


class TerminatedError(TrainerError):
    """SIGTERM (pod deleted, suspended or preempted): the next run resumes from the checkpoint."""

    reason = "Interrupted"


#: Set once SIGTERM has arrived. The handler's exception can surface wrapped in another one (a tf.function
#: that was binding its arguments when the signal came re-raises it as a TypeError), or be swallowed by
#: library code; the flag makes the outcome "Interrupted" whatever form the exception reaches us in.
TERMINATED = threading.Event()
TERMINATED_MESSAGE = "terminated by SIGTERM; a restart resumes from the last finished epoch"


def on_sigterm(signum: int, frame: FrameType | None) -> None:
    """The SIGTERM handler: record the signal, then stop whatever Python code the main thread is running.

    A second SIGTERM only finds the flag set: raising again could break the final report being written.
    """
    if TERMINATED.is_set():
        return
    TERMINATED.set()
    raise TerminatedError(TERMINATED_MESSAGE)


def raise_if_terminated() -> None:
    """Called between epochs, so a SIGTERM whose exception was swallowed still ends the run there."""
    if TERMINATED.is_set():
        raise TerminatedError(TERMINATED_MESSAGE)
