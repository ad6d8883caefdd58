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
    JOB_FILE,
    LOCAL_NAMESPACE,
    LOG_FILE,
    SPEC_FILE,
    STATUS_FILE,
    TERMINATION_LOG,
    now,
    write_json,
)
from transferjob.backends.localstatus import AttemptEnd, LocalStatus, Outcome
from transferjob.models import TransferJob, TransferJobSpec, TransferJobStatus
from transferjob.status import TERMINAL_PHASES, failure


class Runner:
    """One job directory's trainer runs and the files they update; `LocalStatus` decides."""

    def __init__(self, job_dir: Path, trainer: list[str], paths: list[str]) -> None:
        self.job_dir = job_dir
        self.trainer = trainer
        self.paths = paths
        #: Every event names the job it is about: `LocalBackend.events` shows only the current one's. The
        #: trainer gets it too, as the operator passes a TransferJob's: it owns the output location in
        #: this uid's name, so a retry resumes there and a job created again under the name does not.
        self.uid = TransferJob.from_yaml((job_dir / JOB_FILE).read_text()).metadata.uid
        spec = TransferJobSpec.model_validate(json.loads((job_dir / SPEC_FILE).read_text()))
        status = TransferJobStatus.model_validate(json.loads((job_dir / STATUS_FILE).read_text()))
        self.state = LocalStatus(spec, status)
        self.proc: subprocess.Popen[bytes] | None = None
        self.deadline_hit = False

    def event(self, type_: str, reason: str, message: str) -> None:
        record = {
            "type": type_, "reason": reason, "message": message, "time": now().isoformat(), "uid": self.uid,
        }  # fmt: skip
        with (self.job_dir / EVENTS_FILE).open("a") as handle:
            handle.write(json.dumps(record) + "\n")

    def save(self) -> None:
        write_json(self.job_dir / STATUS_FILE, self.state.status.to_dict())

    def fail(self, reason: str, message: str) -> None:
        self.state.fail(reason, message, now())
        self.save()
        self.event("Warning", reason, message)

    def run(self) -> int:
        """Run until the job succeeded or failed for good; the exit code says which (0 or 1)."""
        policy = self.state.spec.run_policy
        if policy.active_deadline_seconds:
            timer = threading.Timer(policy.active_deadline_seconds, self._deadline)
            timer.daemon = True
            timer.start()
        while True:
            outcome = self.state.ended(self._attempt(), now())
            self.save()
            status = self.state.status
            if outcome is Outcome.SUCCEEDED:
                succeeded = next(c for c in status.conditions if c.type == "Succeeded")
                self.event("Normal", succeeded.reason, succeeded.message)
                return 0
            if outcome is Outcome.FAILED:
                self.event("Warning", *failure(status))
                return 1
            next_attempt = self.state.attempts + 1
            self.event("Warning", "Restarting", f"attempt {next_attempt} after {self.state.last_exit}")

    def _attempt(self) -> AttemptEnd:
        """One trainer run, its lines folded into the status as they come; how it ended."""
        termination = self.job_dir / TERMINATION_LOG
        termination.unlink(missing_ok=True)
        identity = (
            ["--job", f"{LOCAL_NAMESPACE}/{self.job_dir.name}", "--job-uid", self.uid] if self.uid else []
        )
        command = [
            *self.trainer, "--spec", str(self.job_dir / SPEC_FILE), *self.paths,
            "--termination-log", str(termination), *identity,
        ]  # fmt: skip
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        last_lines: list[str] = []
        with (self.job_dir / LOG_FILE).open("ab") as log:
            self.proc = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.job_dir, env=env,
            )  # fmt: skip
            self.state.started(now())
            self.save()
            self.event("Normal", "Started", f"trainer started (attempt {self.state.attempts})")
            assert self.proc.stdout is not None
            # readline, not iteration: iterating a pipe reads ahead and would delay progress lines.
            for raw in iter(self.proc.stdout.readline, b""):
                log.write(raw)
                log.flush()
                text = raw.decode(errors="replace").rstrip("\n")
                if text.strip():
                    last_lines = [*last_lines[-4:], text]
                if self.state.line(text, now()):
                    self.save()
            code = self.proc.wait()
        return AttemptEnd(
            exit_code=code,
            termination=termination.read_text() if termination.exists() else "",
            last_lines=tuple(last_lines),
            deadline_hit=self.deadline_hit,
        )

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
        if self.job_dir.exists() and self.state.status.phase not in TERMINAL_PHASES:
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
