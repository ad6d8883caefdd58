"""Why a run failed, in the terms the operator acts on.

A permanent error (bad spec, bad data) fails the TransferJob at once with exit code `EXIT_PERMANENT`;
anything else exits 1 and the Job's backoff retries it, resuming from the last checkpoint.
"""

from __future__ import annotations


class TrainerError(Exception):
    """A failure with a machine-readable reason; retryable unless a subclass says otherwise."""

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


class TerminatedError(TrainerError):
    """SIGTERM (pod deleted, suspended or preempted): the next run resumes from the checkpoint."""

    reason = "Interrupted"
