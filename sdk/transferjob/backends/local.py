"""Run TransferJobs on this machine: the same spec, the same trainer, the same progress protocol.

Each job lives in `${TJ_HOME:-~/.transferjob}/jobs/<name>/` so it outlives the client object and the
Python process that started it (a notebook kernel restart does not lose it):

- `job.yaml`: the TransferJob as submitted (metadata, spec);
- `spec.json`: what the trainer reads (for `fromJob`, the runner passes the upstream job's exported
  model as `--init-model`, as the operator does);
- `runner.pid`: the detached runner (`python -m transferjob.backends.localrunner DIR`), which starts the
  trainer, copies its output to `log`, folds progress lines into `status.json` (the same
  `TransferJobStatus` the operator writes on a cluster), records `events.jsonl`, retries retryable
  failures up to `runPolicy.backoffLimit` and enforces `activeDeadlineSeconds`.

A name is reused only after `delete` has stopped the old runner and removed its folder, and every event
carries the uid of the job it is about, so a job created again under an old name never shows its
predecessor's events or log. A folder whose files cannot be read (edited by hand, a full disk) is an
error for that job alone: `list` leaves it out with a warning naming it.

Locations: `hostPath`, `file://` URIs and absolute paths are local folders; a PVC exists only in a
cluster, so it is a `SpecError` naming the field.
"""

from __future__ import annotations

import builtins
import contextlib
import datetime as dt
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import yaml

from transferjob.backends.base import (
    Backend,
    JobEvent,
    default_generate_name,
    generate_name,
    matches_selector,
)
from transferjob.constants import LABEL_SWEEP
from transferjob.errors import (
    BackendError,
    JobExistsError,
    JobNotFoundError,
    JobNotReadyError,
    SpecError,
    SweepNotFoundError,
)
from transferjob.models import Location, Phase, TransferJob, TransferJobStatus
from transferjob.status import TERMINAL_PHASES, merge_conditions
from transferjob.sweeps import TransferSweep, TransferSweepStatus

_log = logging.getLogger(__name__)

#: How often a follower looks at a local file again; local files have no watch API worth a dependency.
POLL_SECONDS = 0.2

JOB_FILE = "job.yaml"
SPEC_FILE = "spec.json"
STATUS_FILE = "status.json"
EVENTS_FILE = "events.jsonl"
LOG_FILE = "log"
RUNNER_PID_FILE = "runner.pid"
TERMINATION_LOG = "termination-log"
#: What `namespace` says for local jobs (they have none); the trainer records it with the job's name.
LOCAL_NAMESPACE = "local"


def default_home() -> Path:
    """`$TJ_HOME`, or `~/.transferjob`: the one place local jobs are found again."""
    return Path(os.environ.get("TJ_HOME") or Path.home() / ".transferjob").expanduser()


def local_path(location: Location, field: str) -> Path | str:
    """The folder a location names on this machine, or its object-store URI (the trainer reads those
    itself, with the credentials of the usual environment variables); `field` is its spec path."""
    if location.host_path is not None:
        return Path(location.host_path)
    if location.uri is not None:
        if location.uri.startswith("file://"):
            return Path(location.uri.removeprefix("file://"))
        if location.uri.startswith("/"):
            return Path(location.uri)
        return location.uri
    raise SpecError(
        [
            f"{field}.pvc: a PersistentVolumeClaim exists only in a cluster; the local backend needs "
            "hostPath or a file:// uri"
        ]
    )


def write_json(path: Path, data: object) -> None:
    """Replace a file atomically, so a reader never sees half of it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def process_alive(pid: int, marker: str) -> bool:
    """Whether `pid` runs (not a zombie) and its command line mentions `marker` (not a reused pid)."""
    proc = Path(f"/proc/{pid}")
    if not proc.parent.joinpath("self").exists():  # no procfs (macOS): trust the pid
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True
    try:
        cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z" and marker in cmdline


class LocalBackend(Backend):
    """TransferJobs as detached local processes; see the module docstring for the layout on disk."""

    def __init__(self, home: Path | str | None = None, trainer: builtins.list[str] | None = None) -> None:
        self.home = Path(home).expanduser() if home is not None else default_home()
        self.jobs_dir = self.home / "jobs"
        self.sweeps_dir = self.home / "sweeps"
        self.namespace = LOCAL_NAMESPACE
        #: The trainer's command line, before `--spec ...`: `$TJ_TRAINER` (e.g. the interpreter of a
        #: separate TensorFlow environment, `/opt/tf/bin/python -m transferjob_trainer`), else this one.
        self.trainer = trainer or shlex.split(os.environ.get("TJ_TRAINER", "")) or [
            sys.executable, "-m", "transferjob_trainer",
        ]  # fmt: skip

    # ------------------------------------------------------------------ create
    def create(self, job: TransferJob) -> TransferJob:
        job = job.revalidated()  # every rule the API server applies, before anything starts
        spec = job.spec
        if spec.run_policy.suspend:
            raise SpecError(["spec.runPolicy.suspend: the local backend cannot suspend a job"])
        data_dir = local_path(spec.data.source, "spec.data.source")
        output_dir = local_path(spec.output.location, "spec.output.location")
        init_model = None
        if spec.model.from_job is not None:  # as the operator does: the spec as written, plus a path
            init_model = self.fine_tune_source(self.get(spec.model.from_job))["fromModel"]

        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        name = job.metadata.name
        for _ in range(20):
            candidate = name or generate_name(job.metadata.generate_name or default_generate_name(job))
            try:
                (self.jobs_dir / candidate).mkdir()
            except FileExistsError as error:
                if name:
                    raise JobExistsError(name) from error
                continue
            name = candidate
            break
        else:
            raise BackendError(f"no free name for prefix {job.metadata.generate_name!r}")
        job_dir = self.jobs_dir / name
        job.metadata.name = name
        job.metadata.generate_name = None
        job.metadata.namespace = None
        job.metadata.uid = str(uuid.uuid4())
        job.metadata.creation_timestamp = now()
        job.metadata.generation = 1
        job.status = None

        (job_dir / JOB_FILE).write_text(job.to_yaml())
        write_json(job_dir / SPEC_FILE, spec.to_dict())
        status = TransferJobStatus(phase=Phase.PENDING, epochs=spec.training.epochs, observed_generation=1)
        write_json(job_dir / STATUS_FILE, status.to_dict())
        if isinstance(output_dir, Path):
            output_dir.mkdir(parents=True, exist_ok=True)
        self._start_runner(job_dir, data_dir, output_dir, init_model)
        return self.get(name)

    def _start_runner(
        self, job_dir: Path, data_dir: Path | str, output_dir: Path | str, init_model: str | None
    ) -> None:
        """Start the runner in its own session: it survives this process and its terminal."""
        paths = ["--data-dir", str(data_dir), "--output-dir", str(output_dir)]
        if init_model is not None:
            paths += ["--init-model", init_model]
        runner = [sys.executable, "-m", "transferjob.backends.localrunner", str(job_dir)]
        command = [*runner, *paths, "--", *self.trainer]
        with open(os.devnull, "rb") as devnull, (job_dir / "runner.log").open("ab") as runner_log:
            proc = subprocess.Popen(
                command, stdin=devnull, stdout=runner_log, stderr=subprocess.STDOUT, start_new_session=True
            )
        (job_dir / RUNNER_PID_FILE).write_text(str(proc.pid))
        # Reap it when it ends while this process lives on (a notebook); otherwise it would linger as
        # a zombie and look alive.
        threading.Thread(target=proc.wait, name=f"reap-{job_dir.name}", daemon=True).start()

    # --------------------------------------------------------------------- read
    def _dir(self, name: str) -> Path:
        job_dir = self.jobs_dir / name
        if "/" in name or name in ("", ".", "..") or not (job_dir / JOB_FILE).exists():
            raise JobNotFoundError(name)
        return job_dir

    def _runner_alive(self, job_dir: Path) -> bool:
        try:
            pid = int((job_dir / RUNNER_PID_FILE).read_text())
        except (OSError, ValueError):
            return False
        return process_alive(pid, str(job_dir))

    def _read(self, job_dir: Path) -> tuple[TransferJob, TransferJobStatus]:
        """The job and its status as stored; a record that cannot be read is a `BackendError` naming it."""
        name = job_dir.name
        try:
            return (
                TransferJob.from_yaml((job_dir / JOB_FILE).read_text()),
                TransferJobStatus.model_validate(json.loads((job_dir / STATUS_FILE).read_text())),
            )
        except FileNotFoundError as error:  # deleted meanwhile
            raise JobNotFoundError(name) from error
        except (OSError, ValueError, yaml.YAMLError) as error:  # SpecError is a ValueError
            raise BackendError(
                f"local job {name!r} has an unreadable record in {job_dir} ({error}); "
                f"`tj --local delete {name}` removes it"
            ) from error

    def get(self, name: str) -> TransferJob:
        job_dir = self._dir(name)
        job, status = self._read(job_dir)
        if status.phase not in TERMINAL_PHASES and not self._runner_alive(job_dir):
            # Re-read: the runner may have written its last status between the two reads above.
            status = self._read(job_dir)[1]
            if status.phase not in TERMINAL_PHASES:
                status.phase = Phase.FAILED
                message = "the local runner process is gone (killed, or the machine restarted)"
                lost = {"Failed": ("RunnerLost", message)}
                generation = status.observed_generation
                status.conditions = merge_conditions(status.conditions, lost, now(), generation)
        job.status = status
        return job

    def list(self, label_selector: str | None = None) -> builtins.list[TransferJob]:
        try:  # a selector the API server would refuse is an error even when there is nothing to match
            matches_selector({}, label_selector)
        except ValueError as error:
            raise BackendError(str(error)) from error
        if not self.jobs_dir.exists():
            return []
        jobs = []
        for job_dir in self.jobs_dir.iterdir():
            if not (job_dir / JOB_FILE).exists():
                continue
            try:
                jobs.append(self.get(job_dir.name))
            except JobNotFoundError:
                continue
            except BackendError as error:
                _log.warning("skipped: %s", error)
        chosen = [job for job in jobs if matches_selector(job.metadata.labels, label_selector)]
        return sorted(chosen, key=lambda j: (j.metadata.creation_timestamp or now(), j.metadata.name or ""))

    def stream(self, name: str, timeout: float | None) -> Iterator[TransferJob]:
        deadline = None if timeout is None else time.monotonic() + timeout
        status_file = self._dir(name) / STATUS_FILE
        last = None
        while deadline is None or time.monotonic() < deadline:
            job = self.get(name)
            seen = job.status.to_dict() if job.status else None
            if seen != last:
                last = seen
                yield job
            time.sleep(POLL_SECONDS)
            if not status_file.exists():
                raise JobNotFoundError(name)

    def logs(self, name: str, follow: bool, tail: int | None) -> Iterator[str]:
        log_file = self._dir(name) / LOG_FILE
        while follow and not log_file.exists():
            status = self.get(name).status
            if status is not None and status.phase in TERMINAL_PHASES:
                return
            time.sleep(POLL_SECONDS)
        if not log_file.exists():
            return
        with log_file.open("rb") as handle:
            lines = handle.read().split(b"\n")
            pending = lines.pop()  # an unfinished last line
            start = 0 if tail is None else max(0, len(lines) - tail)
            for line in lines[start:]:
                yield line.decode(errors="replace")
            while follow:
                chunk = handle.read()
                if chunk:
                    *complete, pending = (pending + chunk).split(b"\n")
                    for line in complete:
                        yield line.decode(errors="replace")
                    continue
                job = self.get(name)
                if (
                    job.status
                    and job.status.phase in TERMINAL_PHASES
                    and not self._runner_alive(log_file.parent)
                ):
                    rest = handle.read()
                    for line in (pending + rest).split(b"\n"):
                        if line:
                            yield line.decode(errors="replace")
                    return
                time.sleep(POLL_SECONDS)

    def events(self, name: str) -> builtins.list[JobEvent]:
        uid = self.get(name).metadata.uid
        events_file = self._dir(name) / EVENTS_FILE
        if not events_file.exists():
            return []
        events = []
        for line in events_file.read_text().splitlines():
            with contextlib.suppress(ValueError, KeyError):
                data = json.loads(line)
                if data["uid"] != uid:
                    continue  # about an earlier job of this name whose runner outlived its deletion
                events.append(
                    JobEvent(
                        type=data["type"],
                        reason=data["reason"],
                        message=data["message"],
                        time=dt.datetime.fromisoformat(data["time"]),
                    )
                )
        return events

    # ------------------------------------------------------------------- delete
    def delete(self, name: str) -> None:
        job_dir = self._dir(name)
        try:
            pid = int((job_dir / RUNNER_PID_FILE).read_text())
        except (OSError, ValueError):
            pid = 0
        if pid and process_alive(pid, str(job_dir)):
            # The runner leads its own process group; the trainer is in it too. SIGTERM lets the trainer
            # save its epoch; SIGKILL follows if it does not end in time.
            for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, sig)
                deadline = time.monotonic() + grace
                while process_alive(pid, str(job_dir)) and time.monotonic() < deadline:
                    time.sleep(0.05)
            if process_alive(pid, str(job_dir)):
                # Removing the folder now would let this runner write into a new job of the same name.
                raise BackendError(f"cannot stop the runner of local job {name!r} (pid {pid}); not deleted")
        shutil.rmtree(job_dir, ignore_errors=True)

    def fine_tune_source(self, job: TransferJob) -> dict[str, str]:
        status = job.status
        name = job.metadata.name
        if status is None or status.phase is not Phase.SUCCEEDED or status.model is None:
            phase = status.phase.value if status and status.phase else "unknown"
            raise JobNotReadyError(
                f"TransferJob {name!r} has not succeeded (phase {phase}); a local fine-tuning run needs "
                "its exported model: wait for it first"
            )
        return {"fromModel": status.model.uri}

    def job_dir(self, name: str) -> Path:
        """Where a local job keeps its files (for people who want to look)."""
        return self._dir(name)

    # ------------------------------------------------------------------- sweeps
    # A local sweep is one file, `sweeps/<name>.yaml` (spec and status); its trials are local jobs.
    # No operator runs it: `TransferJobClient` takes its steps in the calling process.
    runs_sweeps = False

    def _sweep_file(self, name: str) -> Path:
        if "/" in name or name in ("", ".", ".."):
            raise SweepNotFoundError(name)
        return self.sweeps_dir / f"{name}.yaml"

    def create_sweep(self, sweep: TransferSweep) -> TransferSweep:
        sweep = TransferSweep.model_validate(sweep.to_dict())
        spec = sweep.spec
        if spec.suspend or spec.template.run_policy.suspend:
            raise SpecError(["spec.suspend: the local backend cannot suspend a sweep or its trials"])
        name = sweep.metadata.name or ""
        path = self._sweep_file(name)
        self.sweeps_dir.mkdir(parents=True, exist_ok=True)
        sweep.metadata.namespace = None
        sweep.metadata.uid = str(uuid.uuid4())
        sweep.metadata.creation_timestamp = now()
        sweep.metadata.generation = 1
        sweep.status = None
        try:
            with path.open("x") as file:
                file.write(sweep.to_yaml())
        except FileExistsError as error:
            raise BackendError(
                f"TransferSweep {name!r} already exists; delete it or choose another name"
            ) from error
        return sweep

    def get_sweep(self, name: str) -> TransferSweep:
        path = self._sweep_file(name)
        try:
            return TransferSweep.from_yaml(path.read_text())
        except FileNotFoundError as error:
            raise SweepNotFoundError(name) from error
        except (OSError, ValueError, yaml.YAMLError) as error:
            raise BackendError(
                f"local sweep {name!r} has an unreadable record in {path} ({error})"
            ) from error

    def update_sweep_status(self, name: str, status: TransferSweepStatus) -> None:
        sweep = self.get_sweep(name)
        sweep.status = status
        path = self._sweep_file(name)
        partial = path.with_suffix(".tmp")
        partial.write_text(sweep.to_yaml())
        partial.replace(path)  # atomic: a reader sees the old status or the new one

    def delete_sweep(self, name: str) -> None:
        path = self._sweep_file(name)
        if not path.exists():
            raise SweepNotFoundError(name)
        for job in self.list(f"{LABEL_SWEEP}={name}"):
            with contextlib.suppress(JobNotFoundError):
                self.delete(job.metadata.name or "")
        path.unlink(missing_ok=True)
