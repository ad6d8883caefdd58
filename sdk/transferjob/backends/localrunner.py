"""The detached process that runs one local TransferJob: what a Job controller plus operator do in a cluster.

`LocalBackend.create` starts `python -m transferjob.backends.localrunner JOB_DIR --data-dir D
--output-dir O [--init-model M] -- TRAINER...` in a new session and returns. This process then owns
the job directory: it runs the trainer (retrying retryable failures up to `runPolicy.backoffLimit`,
killing it at `activeDeadlineSeconds`), copies every output line to `log`, folds progress lines into
`status.json` and appends what happened to `events.jsonl`. Nobody has to keep a client open for a local
job's status to stay current. SIGTERM (from `LocalBackend.delete`) stops the trainer and the runner.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from transferjob.backends.local import (
    EVENTS_FILE,
    LOG_FILE,
    SPEC_FILE,
    STATUS_FILE,
    TERMINATION_LOG,
    now,
    write_json,
)
from transferjob.backends.status import apply_event, set_condition
from transferjob.constants import EXIT_PERMANENT
from transferjob.models import Phase, TransferJobSpec, TransferJobStatus
from transferjob.progress import Failed, Finished, decode


class Runner:
    """One job directory's trainer runs and the files they update."""

    def __init__(self, job_dir: Path, trainer: list[str], paths: list[str]) -> None:
        self.job_dir = job_dir
        self.trainer = trainer
        self.paths = paths
        self.spec = TransferJobSpec.model_validate(json.loads((job_dir / SPEC_FILE).read_text()))
        self.status = TransferJobStatus.model_validate(json.loads((job_dir / STATUS_FILE).read_text()))
        self.proc: subprocess.Popen[bytes] | None = None
        self.deadline_hit = False

    def event(self, type_: str, reason: str, message: str) -> None:
        record = {"type": type_, "reason": reason, "message": message, "time": now().isoformat()}
        with (self.job_dir / EVENTS_FILE).open("a") as handle:
            handle.write(json.dumps(record) + "\n")

    def save(self) -> None:
        write_json(self.job_dir / STATUS_FILE, self.status.to_dict())

    def fail(self, reason: str, message: str) -> None:
        self.status = apply_event(self.status, Failed(reason=reason, message=message), now())
        self.save()
        self.event("Warning", reason, message)

    def run(self) -> int:
        """Run until the job succeeded or failed for good; the exit code says which (0 or 1)."""
        policy = self.spec.run_policy
        if policy.active_deadline_seconds:
            timer = threading.Timer(policy.active_deadline_seconds, self._deadline)
            timer.daemon = True
            timer.start()
        attempt = 0
        while True:
            code, final, last_lines = self._attempt(attempt)
            if isinstance(final, Finished):
                self.status = apply_event(self.status, final, now())
                self.save()
                self.event("Normal", "Succeeded", f"test accuracy {final.test.accuracy:.4f}")
                return 0
            if self.deadline_hit:
                self.fail("DeadlineExceeded", f"the job ran longer than {policy.active_deadline_seconds}s")
                return 1
            if isinstance(final, Failed):
                reason, message, permanent = final.reason, final.message, final.permanent
            else:
                reason, permanent = "TrainerExited", False
                message = f"the trainer exited with code {code}" + (
                    f": {last_lines[-1]}" if last_lines else ""
                )
            permanent = permanent or code == EXIT_PERMANENT
            if permanent or attempt >= policy.backoff_limit:
                if not permanent and policy.backoff_limit:
                    message = f"{message} (after {attempt + 1} attempts)"
                self.fail(reason, message)
                return 1
            attempt += 1
            self.status.restarts = attempt
            set_condition(self.status, "Running", False, "Restarting", f"{reason}: {message}", now())
            self.save()
            self.event("Warning", "Restarting", f"attempt {attempt + 1} after {reason}: {message}")

    def _attempt(self, attempt: int) -> tuple[int, Finished | Failed | None, list[str]]:
        """One trainer run: its exit code, its final event (from stdout or the termination log)."""
        termination = self.job_dir / TERMINATION_LOG
        termination.unlink(missing_ok=True)
        command = [
            *self.trainer, "--spec", str(self.job_dir / SPEC_FILE), *self.paths,
            "--termination-log", str(termination),
        ]  # fmt: skip
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.event("Normal", "Started", f"trainer started (attempt {attempt + 1})")
        final: Finished | Failed | None = None
        last_lines: list[str] = []
        with (self.job_dir / LOG_FILE).open("ab") as log:
            self.proc = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.job_dir, env=env,
            )  # fmt: skip
            assert self.proc.stdout is not None
            # readline, not iteration: iterating a pipe reads ahead and would delay progress lines.
            for raw in iter(self.proc.stdout.readline, b""):
                log.write(raw)
                log.flush()
                text = raw.decode(errors="replace").rstrip("\n")
                if text.strip():
                    last_lines = [*last_lines[-4:], text]
                event = decode(text)
                if event is None:
                    continue
                if isinstance(event, Finished | Failed):
                    final = event  # applied by `run`, which knows about retries
                else:
                    self.status = apply_event(self.status, event, now())
                    self.save()
            code = self.proc.wait()
        if final is None and termination.exists():
            last = decode(termination.read_text())
            if isinstance(last, Finished | Failed):
                final = last
        if isinstance(final, Finished) and code != 0:
            final = None
        return code, final, last_lines

    def _deadline(self) -> None:
        self.deadline_hit = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()

    def stop(self, *_: object) -> None:
        """SIGTERM: stop the trainer and leave a Failed status behind (unless deleted meanwhile)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
            if self.proc.poll() is None:
                self.proc.kill()
        if self.job_dir.exists() and self.status.phase not in (Phase.SUCCEEDED, Phase.FAILED):
            with contextlib.suppress(OSError):
                self.fail("Terminated", "the local runner was stopped")
        sys.exit(1)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    argv, trainer = argv[:split], argv[split + 1 :]
    parser = argparse.ArgumentParser(prog="python -m transferjob.backends.localrunner")
    parser.add_argument("job_dir", type=Path)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--init-model")
    args = parser.parse_args(argv)
    if not trainer:
        parser.error("the trainer's command line must follow --")
    paths = ["--data-dir", args.data_dir, "--output-dir", args.output_dir]
    if args.init_model:
        paths += ["--init-model", args.init_model]
    runner = Runner(args.job_dir, trainer, paths)
    signal.signal(signal.SIGTERM, runner.stop)
    try:
        return runner.run()
    except Exception as error:  # the status must not stay Running when the runner itself breaks
        runner.fail("RunnerError", f"{type(error).__name__}: {error}")
        raise


if __name__ == "__main__":
    sys.exit(main())
