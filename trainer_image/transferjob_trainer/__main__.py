"""`transferjob-trainer --spec FILE [--data-dir DIR] [--output-dir DIR] [--init-model PATH]
[--job NAMESPACE/NAME --job-uid UID]`.

The contract with the operator and the local backend:

- stdout carries only progress-protocol lines (`transferjob.progress`), one per event, flushed; TensorFlow,
  Keras and our own notes go to stderr.
- The final event (finished or failed) is also written to the termination log.
- `--job` and `--job-uid` name the TransferJob the run is for: it claims the output location in that name,
  and a location another job owns fails it (`ownership`).
- Exit 0 on success; `EXIT_PERMANENT` (42) when no retry can help (InvalidSpecError, InvalidDataError,
  StorageError, OutputInUseError); 1 for anything else (TrainingError: retry, the run resumes from its
  checkpoint); 143 after SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback
from typing import TextIO

from transferjob.constants import EXIT_PERMANENT
from transferjob.progress import Failed
from transferjob_trainer.errors import (
    TERMINATED,
    TERMINATED_MESSAGE,
    TerminatedError,
    TrainerError,
    on_sigterm,
)
from transferjob_trainer.report import Reporter, default_termination_log

EXIT_RETRYABLE = 1
EXIT_TERMINATED = 143


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="transferjob-trainer", description="Run one TransferJob spec; progress as JSON lines on stdout."
    )
    parser.add_argument("--spec", required=True, help="TransferJob manifest or spec, YAML or JSON")
    parser.add_argument("--data-dir", help="folder holding train/val/test (overrides data.source)")
    parser.add_argument(
        "--output-dir", help="where model, metrics and checkpoints go (overrides output.location)"
    )
    parser.add_argument("--init-model", help="the .keras model to fine-tune (resolves model.fromJob)")
    parser.add_argument(
        "--job", metavar="[NAMESPACE/]NAME", help="the TransferJob this run is for (recorded with --job-uid)"
    )
    parser.add_argument(
        "--job-uid",
        metavar="UID",
        help="the TransferJob's uid: the run owns its output location in this name, and a retry with the "
        "same uid resumes there (without it the run claims nothing)",
    )
    parser.add_argument(
        "--termination-log",
        default=None,
        help="where the final event is written (default: $TJ_TERMINATION_LOG, else /dev/termination-log)",
    )
    return parser


def protocol_stream() -> TextIO:
    """A private handle on the real stdout for events; fd 1 itself is pointed at stderr.

    TensorFlow's C++ code, Keras and user code may print to stdout; only protocol lines may appear there.
    """
    sys.stdout.flush()
    events_fd = os.dup(1)
    os.dup2(2, 1)
    return os.fdopen(events_fd, "w", buffering=1, encoding="utf-8")


def interrupted(reporter: Reporter) -> int:
    """SIGTERM came, whatever exception it surfaced as: retryable, and the restart resumes."""
    reporter.finish(Failed(reason=TerminatedError.reason, message=TERMINATED_MESSAGE, permanent=False))
    return EXIT_TERMINATED


def execute(args: argparse.Namespace, reporter: Reporter) -> int:
    """Run and map every outcome to a final event and an exit code."""
    from transferjob_trainer.ownership import Owner
    from transferjob_trainer.paths import resolve_paths
    from transferjob_trainer.run import load_spec, run

    try:
        spec = load_spec(args.spec)
        paths = resolve_paths(spec, args.data_dir, args.output_dir, args.init_model)
        finished = run(spec, paths, reporter, Owner.from_flags(args.job, args.job_uid))
        if finished is None:  # a worker of a group: the chief reports the result
            reporter.phase("exporting", "done: the chief worker tests and exports the model")
        else:
            reporter.finish(finished)
        return 0
    except Exception as error:
        if TERMINATED.is_set():
            return interrupted(reporter)
        if isinstance(error, TrainerError):
            reporter.finish(Failed(reason=error.reason, message=str(error), permanent=error.permanent))
            return EXIT_PERMANENT if error.permanent else EXIT_RETRYABLE
        traceback.print_exc(file=sys.stderr)
        message = f"{error.__class__.__name__}: {error}".strip()
        reporter.finish(Failed(reason="TrainingError", message=message, permanent=False))
        return EXIT_RETRYABLE


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    reporter = Reporter(protocol_stream(), args.termination_log or default_termination_log())
    signal.signal(signal.SIGTERM, on_sigterm)
    return execute(args, reporter)


if __name__ == "__main__":
    sys.exit(main())
