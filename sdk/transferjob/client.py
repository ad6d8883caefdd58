"""`TransferJobClient`: submit, follow and chain TransferJobs from Python, on a cluster or locally.

One facade over two backends (`backends.kubernetes`, `backends.local`): the waiting rules, the typed
progress events and the fine-tuning chain are written once here, on top of the backend's feed of
object snapshots. Progress events come from diffing successive `.status` objects (`progress_events`,
a pure function), so they are the same whether the operator or the local runner wrote the status, and
a watch that starts late still sees every epoch, once, in order.

    from transferjob import TransferJobClient, TransferJob

    client = TransferJobClient()                         # kubeconfig; TransferJobClient("local") for here
    name = client.submit(TransferJob.from_yaml(open("features.yaml").read()))
    for event in client.watch(name):
        print(event)
    job = client.wait(name)                              # raises JobFailedError(reason, message)
    tuned = client.fine_tune(from_job=name)
"""

from __future__ import annotations

import builtins
import contextlib
import datetime as dt
import logging
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from transferjob.backends.base import Backend, JobEvent, generate_name
from transferjob.errors import (
    JobFailedError,
    JobNotFoundError,
    JobNotReadyError,
    JobTimeoutError,
    SweepFailedError,
    SweepNotFoundError,
    TransferJobError,
)
from transferjob.models import (
    ApiModel,
    EpochMetrics,
    Location,
    Mode,
    OutputSpec,
    Phase,
    PVCSource,
    StepProgressStatus,
    TransferJob,
    TransferJobSpec,
    TransferJobStatus,
)
from transferjob.serving import inference_service
from transferjob.status import TERMINAL_PHASES, failure
from transferjob.sweeps import (
    Algorithm,
    Objective,
    SearchSpace,
    SweepEarlyStopping,
    TransferSweep,
    TransferSweepStatus,
)

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

__all__ = [
    "EpochCompleted",
    "JobEvent",
    "PhaseChanged",
    "StepAdvanced",
    "TransferJobClient",
    "WatchEvent",
    "fine_tuning_job",
    "progress_events",
    "run_sweep_here",
]

log = logging.getLogger("transferjob")


@dataclass(frozen=True)
class PhaseChanged:
    """The job entered `phase`; `reason`/`message` say why (from its conditions)."""

    name: str
    phase: Phase
    reason: str
    message: str
    status: TransferJobStatus

    @property
    def finished(self) -> bool:
        """Succeeded or Failed: nothing follows this event."""
        return self.phase in TERMINAL_PHASES


@dataclass(frozen=True)
class EpochCompleted:
    """One epoch finished; `metrics` holds its loss and accuracy, train and validation."""

    name: str
    epoch: int
    epochs: int | None
    metrics: EpochMetrics


@dataclass(frozen=True)
class StepAdvanced:
    """The step under way got further (`.status.progress`, from the trainer about every 10 s)."""

    name: str
    progress: StepProgressStatus


WatchEvent = PhaseChanged | EpochCompleted | StepAdvanced


def _reason(status: TransferJobStatus) -> tuple[str, str]:
    if status.phase is Phase.FAILED:
        return failure(status)
    phase = status.phase.value if status.phase else ""
    for condition in status.conditions:
        if condition.type == phase and condition.status == "True":
            return condition.reason, condition.message
    running = [c for c in status.conditions if c.status == "True"]
    return (running[-1].reason, running[-1].message) if running else ("", "")


def progress_events(
    name: str, before: TransferJobStatus | None, after: TransferJobStatus, last_epoch: int
) -> list[WatchEvent]:
    """What changed from `before` to `after`, as events: epochs after `last_epoch`, and a new phase.

    Epochs come from `history` plus the latest `metrics` (either may be ahead of the other by a
    coalesced update), are never repeated (a retried run that starts over at epoch 1 is not news)
    and come in order. A phase change is reported before the epochs unless it is the final one, which
    comes last, so a consumer can stop at the event whose `finished` is true.
    """
    by_epoch = {m.epoch: m for m in after.history if m.epoch > last_epoch}
    if after.metrics is not None and after.metrics.epoch > last_epoch:
        by_epoch.setdefault(after.metrics.epoch, after.metrics)
    epochs: list[WatchEvent] = [
        EpochCompleted(name, epoch, after.epochs, by_epoch[epoch]) for epoch in sorted(by_epoch)
    ]
    if after.progress is not None and (before is None or before.progress != after.progress):
        epochs.append(StepAdvanced(name, after.progress))
    if after.phase is None or (before is not None and before.phase == after.phase):
        return epochs
    reason, message = _reason(after)
    change = PhaseChanged(name, after.phase, reason, message, after)
    return [*epochs, change] if change.finished else [change, *epochs]


def fine_tuning_job(
    source: TransferJob,
    model_source: dict[str, str],
    *,
    name: str | None = None,
    epochs: int | None = None,
    learning_rate: float | None = None,
    fine_tune_at: int | str | None = None,
    output: Location | None = None,
) -> TransferJob:
    """The FineTuning job that continues `source`: same data, base, head and resources.

    `model_source` is `{"fromJob": ...}` or `{"fromModel": ...}` (what the backend can resolve). The
    output goes next to the source's (`<its folder>-finetune`) unless `output` says otherwise, so the
    first model is never overwritten.
    """
    spec = source.spec.model_copy(deep=True)
    spec.mode = Mode.FINE_TUNING
    spec.model.from_job = model_source.get("fromJob")
    spec.model.from_model = model_source.get("fromModel")
    spec.model.fine_tune_at = fine_tune_at
    spec.training.epochs = epochs
    spec.training.learning_rate = learning_rate
    spec.output = OutputSpec(
        location=output or _sibling(source.spec.output.location, "-finetune"),
        saved_model=spec.output.saved_model,
        tensorboard=spec.output.tensorboard,
    )
    data = spec.to_dict()
    job = TransferJob.model_validate({"metadata": {}, "spec": data})  # re-resolves mode defaults
    source_name = source.metadata.name or "transferjob"
    job.metadata.name = name or f"{source_name[:54]}-finetune"
    job.metadata.labels = dict(source.metadata.labels)
    return job


def _sibling(location: Location, suffix: str) -> Location:
    if location.pvc is not None:
        sub = location.pvc.sub_path.rstrip("/") or "model"
        return Location(pvc=PVCSource(claim_name=location.pvc.claim_name, sub_path=sub + suffix))
    if location.host_path is not None:
        return Location(host_path=location.host_path.rstrip("/") + suffix)
    return Location(uri=(location.uri or "").rstrip("/") + suffix)


class TransferJobClient:
    """Submit and follow TransferJobs; `backend` is "kubernetes" (default), "local", or a `Backend`.

    For the cluster, `namespace`, `kubeconfig` and `context` work as with kubectl. For local runs,
    `home` is where jobs are kept (default `$TJ_HOME` or `~/.transferjob`): any client pointed at the
    same home sees the same jobs, whichever process started them.
    """

    def __init__(
        self,
        backend: Literal["kubernetes", "local"] | Backend = "kubernetes",
        *,
        namespace: str | None = None,
        kubeconfig: str | Path | None = None,
        context: str | None = None,
        home: str | Path | None = None,
    ) -> None:
        if isinstance(backend, Backend):
            self.backend = backend
        elif backend == "local":
            from transferjob.backends.local import LocalBackend

            self.backend = LocalBackend(home)
        elif backend == "kubernetes":
            from transferjob.backends.kubernetes import KubernetesBackend

            self.backend = KubernetesBackend(namespace, kubeconfig, context)
        else:
            raise ValueError(f"backend must be 'kubernetes' or 'local', got {backend!r}")

    @property
    def namespace(self) -> str:
        """The namespace jobs are created and looked up in ("local" for the local backend)."""
        return self.backend.namespace

    def submit(self, job: TransferJob, name: str | None = None) -> str:
        """Create the job and return its name: `name`, else `metadata.name`, else a generated one.

        Generated names look like `mobilenetv2-fe-x7k2p` (or `metadata.generateName` + 5 characters).
        Raises `SpecError` for what the API server would refuse (a name longer than 63 characters, too),
        on either backend, before anything is created. A valid spec that will not do what it is for (an
        untrained base) is created, with a `SpecWarning` for each problem (`warnings.warn`).
        """
        if name is not None:
            job = job.model_copy(deep=True)
            job.metadata.name = name
        job = job.revalidated()
        created = self.backend.create(job)
        for warning in job.spec.warnings():
            warnings.warn(warning, stacklevel=2)
        return created.metadata.name or ""

    def get(self, name: str) -> TransferJob:
        """The job with its current status."""
        return self.backend.get(name)

    def list(self, label_selector: str | None = None) -> builtins.list[TransferJob]:
        """Jobs in the namespace, oldest first; `label_selector` as with `kubectl -l`."""
        return self.backend.list(label_selector)

    def watch(self, name: str, timeout: float | None = None) -> Iterator[WatchEvent]:
        """Progress as it lands on `.status`: phase changes and each epoch, until the job finishes.

        The last event is a `PhaseChanged` whose `finished` is true (it carries the final status);
        raises `JobTimeoutError` after `timeout` seconds and `JobNotFoundError` if the job is deleted.
        """
        before: TransferJobStatus | None = None
        last_epoch = 0
        phase: Phase | None = None
        for job in self.backend.stream(name, timeout):
            status = job.status or TransferJobStatus()
            for event in progress_events(name, before, status, last_epoch):
                if isinstance(event, EpochCompleted):
                    last_epoch = event.epoch
                yield event
                if isinstance(event, PhaseChanged) and event.finished:
                    return
            before, phase = status, status.phase or phase
        raise JobTimeoutError(name, timeout or 0, phase.value if phase else None)

    def wait(
        self,
        name: str,
        timeout: float | None = None,
        until: Phase | str | Iterable[Phase | str] = (Phase.SUCCEEDED,),
        progress: bool | None = None,
        logs: bool = False,
    ) -> TransferJob:
        """Block until the job's phase is in `until` (default Succeeded) and return the job then.

        A Failed job raises `JobFailedError` with the reason and message from its conditions (unless
        Failed is in `until`); a Succeeded job ends the wait whatever `until` says, since no other
        phase can follow. `timeout` raises `JobTimeoutError` (the job keeps running). `progress`
        shows a live progress bar; by default only when attached to a terminal or a notebook.
        `logs` prints the trainer's output to stdout while waiting (following pod restarts).
        """
        wanted = {Phase(until)} if isinstance(until, Phase | str) else {Phase(p) for p in until}
        show = _interactive() if progress is None else progress
        follower = _LogPrinter(self.backend, name) if logs else None
        finished = False
        try:
            job = self._wait(name, timeout, wanted, show)
            finished = bool(job.status and job.status.phase in TERMINAL_PHASES)
            return job
        except JobFailedError:
            finished = True
            raise
        finally:
            if follower is not None:
                follower.finish(grace=10.0 if finished else 0.0)

    def _wait(self, name: str, timeout: float | None, wanted: set[Phase], show: bool) -> TransferJob:
        with _ProgressDisplay(name, enabled=show) as display:
            last_epoch = 0
            before: TransferJobStatus | None = None
            last: TransferJob | None = None
            for job in self.backend.stream(name, timeout):
                last = job
                status = job.status or TransferJobStatus()
                for event in progress_events(name, before, status, last_epoch):
                    if isinstance(event, EpochCompleted):
                        last_epoch = event.epoch
                    display.update(event)
                before = status
                if status.phase in wanted:
                    return job
                if status.phase is Phase.FAILED:
                    raise JobFailedError(job, *failure(status))
                if status.phase is Phase.SUCCEEDED:
                    return job
        phase = last.status.phase if last and last.status else None
        raise JobTimeoutError(name, timeout or 0, phase.value if phase else None)

    def logs(self, name: str, follow: bool = False, tail: int | None = None) -> Iterator[str]:
        """The trainer's output, line by line; `follow` waits for the pod and follows it (and the
        pods of retries) until the job finishes; `tail` starts with the last N lines."""
        return self.backend.logs(name, follow, tail)

    def events(self, name: str) -> builtins.list[JobEvent]:
        """What happened to the job (scheduling, starts, retries, the outcome), oldest first."""
        return self.backend.events(name)

    def delete(self, name: str) -> None:
        """Delete the job; its training pod (or local process) is stopped."""
        self.backend.delete(name)

    def fine_tune(
        self,
        from_job: str,
        *,
        name: str | None = None,
        epochs: int | None = None,
        learning_rate: float | None = None,
        fine_tune_at: int | str | None = None,
        output: Location | None = None,
    ) -> str:
        """Submit the FineTuning job that continues `from_job` (exercise 2 of the reference workflow).

        On a cluster the new job names `from_job` (`model.fromJob`) and the operator starts it once
        that one has succeeded; locally the exported model must exist, so `from_job` must have
        succeeded already (`JobNotReadyError` otherwise). Unset arguments take the FineTuning
        defaults: 10 epochs, Adam 1e-5, the base's default `fineTuneAt` (block_13_expand).
        """
        source = self.get(from_job)
        job = fine_tuning_job(
            source,
            self.backend.fine_tune_source(source),
            name=name,
            epochs=epochs,
            learning_rate=learning_rate,
            fine_tune_at=fine_tune_at,
            output=output,
        )
        return self.submit(job)

    def serve(
        self,
        name: str,
        *,
        service_name: str | None = None,
        service_account: str | None = None,
        apply: bool = False,
    ) -> dict[str, Any]:
        """The KServe InferenceService that serves the SavedModel `name` exported (`serving`); for a
        TransferSweep `name`, its best trial's.

        `apply` creates it in the cluster and returns it as created (the kubernetes backend only: a
        local job's model can be served only from an object store, by a cluster the local backend does
        not know; print the manifest and apply it with kubectl). Raises `JobNotReadyError` before the
        job has succeeded and `ModelNotServableError` when no server in a cluster can read its model
        (no SavedModel, or a hostPath output).
        """
        manifest = inference_service(
            self._served_job(name), name=service_name, service_account=service_account
        )
        return self.backend.create_inference_service(manifest) if apply else manifest

    def _served_job(self, name: str) -> TransferJob:
        """The TransferJob `name`, or when a sweep has that name (and no TransferJob does), its best trial."""
        try:
            return self.get(name)
        except JobNotFoundError:
            try:
                sweep = self.get_sweep(name)
            except SweepNotFoundError:
                raise JobNotFoundError(name, self.namespace) from None
        best = sweep.status.best_trial if sweep.status else None
        if best is None:
            raise JobNotReadyError(f"TransferSweep {name!r} has no succeeded trial to serve yet")
        return self.get(best.name)

    # ------------------------------------------------------------------------------------ sweeps

    def sweep(
        self,
        template: TransferSweep | TransferJobSpec | dict[str, Any],
        parameters: SearchSpace | dict[str, Any] | None = None,
        objective: Objective | dict[str, Any] | str | None = None,
        *,
        name: str | None = None,
        algorithm: Algorithm | dict[str, Any] | str | None = None,
        max_trials: int = 10,
        parallel_trials: int = 1,
        max_failed_trials: int = 3,
        early_stopping: SweepEarlyStopping | dict[str, Any] | None = None,
        wait: bool = False,
        timeout: float | None = None,
    ) -> str:
        """Create a TransferSweep and return its name; `wait` waits for its outcome (`wait_sweep`).

        Either a whole `TransferSweep` (its name, or `name`), or its parts: the TransferJob `template`,
        the search space (`{"training.learningRate": {"logUniform": {"min": 1e-5, "max": 1e-2}}}`), the
        `objective` (a metric name such as "valAccuracy", or `{"metric": ..., "goal": ...}`) and the
        options of `TransferSweepSpec`; `algorithm` is a name ("TPE") or `{"name": ..., "seed": ...}`.
        Without a name, one is generated (`sweep-x7k2p`). Raises `SpecError` for what admission would
        refuse. On the cluster the operator runs the trials; on the local backend this call runs
        them here, one at a time, and returns when the sweep has finished (`run_sweep_here`).
        """
        if isinstance(template, TransferSweep):
            sweep = template.model_copy(deep=True)
        else:
            body = template.to_dict() if isinstance(template, TransferJobSpec) else template
            if isinstance(objective, str):
                objective = {"metric": objective}
            if isinstance(algorithm, str):
                algorithm = {"name": algorithm}
            spec: dict[str, Any] = {
                "template": body,
                "parameters": _wire(parameters),
                "objective": _wire(objective),
                "maxTrials": max_trials,
                "parallelTrials": parallel_trials,
                "maxFailedTrials": max_failed_trials,
            }
            if algorithm is not None:
                spec["algorithm"] = _wire(algorithm)
            if early_stopping is not None:
                spec["earlyStopping"] = _wire(early_stopping)
            sweep = TransferSweep.model_validate({"spec": spec})
        if name is not None:
            sweep.metadata.name = name
        sweep.metadata.name = sweep.metadata.name or generate_name("sweep-")
        created = self.backend.create_sweep(TransferSweep.model_validate(sweep.to_dict()))
        created_name = created.metadata.name or ""
        if not self.backend.runs_sweeps:
            run_sweep_here(self.backend, created_name)
        if wait:
            self.wait_sweep(created_name, timeout=timeout)
        return created_name

    def get_sweep(self, name: str) -> TransferSweep:
        """The sweep with its status (trials, best trial)."""
        return self.backend.get_sweep(name)

    def watch_sweep(
        self, name: str, timeout: float | None = None, poll: float = 2.0
    ) -> Iterator[TransferSweep]:
        """The sweep now, then each time its status changes, until it finishes (the last one yielded);
        raises `JobTimeoutError` after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last: TransferSweepStatus | None = None
        while True:
            sweep = self.backend.get_sweep(name)
            status = sweep.status or TransferSweepStatus()
            if status != last:
                yield sweep
            last = status
            if last.phase in TERMINAL_PHASES:
                return
            if deadline is not None and time.monotonic() >= deadline:
                phase = last.phase.value if last.phase else None
                raise JobTimeoutError(name, timeout or 0, phase)
            time.sleep(poll)

    def wait_sweep(self, name: str, timeout: float | None = None, poll: float = 2.0) -> TransferSweep:
        """Block until the sweep has finished and return it; raises `SweepFailedError` if it failed."""
        *_, sweep = self.watch_sweep(name, timeout, poll)  # the last one: finished
        assert sweep.status is not None
        if sweep.status.phase is Phase.FAILED:
            failed = next((c for c in sweep.status.conditions if c.type == "Failed"), None)
            raise SweepFailedError(name, *((failed.reason, failed.message) if failed else ("Failed", "")))
        return sweep

    def delete_sweep(self, name: str) -> None:
        """Delete the sweep and its trials (stopping the running ones)."""
        self.backend.delete_sweep(name)


def _wire(value: Any) -> Any:
    """A model as its wire dict; anything else as given (pydantic validates it)."""
    return value.to_dict() if isinstance(value, ApiModel) else value


def run_sweep_here(
    backend: Backend, name: str, poll: float = 1.0, now: Callable[[], dt.datetime] | None = None
) -> TransferSweep:
    """Run a sweep in this process, to its end, with the operator's own steps (`sweeping.plan_sweep`).

    For a backend no operator serves (the local one). One trial at a time (parallelTrials is taken as
    1): with the same seed, Grid and Random give the trials the operator gives, and TPE gives the
    operator's trials for parallelTrials 1. A trial the backend refuses to create fails, as a trial
    the API server refuses does; a trial stopped early is deleted (its process stopped). Needs Optuna
    and numpy (the `operator` extra), as `transferjob.suggest` does; the SDK does not import them else.
    """
    from transferjob.sweeping import plan_sweep

    clock = now or (lambda: dt.datetime.now(dt.timezone.utc).replace(microsecond=0))
    refused: dict[str, str] = {}
    while True:
        sweep = backend.get_sweep(name)
        one_at_a_time = sweep.model_copy(
            update={"spec": sweep.spec.model_copy(update={"parallel_trials": 1})}
        )
        children: dict[str, TransferJob] = {}
        for trial in sweep.status.trials if sweep.status else []:
            with contextlib.suppress(JobNotFoundError):
                children[trial.name] = backend.get(trial.name)
        plan = plan_sweep(one_at_a_time, children, clock(), refused)
        backend.update_sweep_status(name, plan.status)
        for event in plan.events:
            (log.warning if event.type == "Warning" else log.info)(
                "%s: %s: %s", name, event.reason, event.message
            )
        for trial_name in plan.delete:
            with contextlib.suppress(JobNotFoundError):
                backend.delete(trial_name)
        for job in plan.create:
            try:
                backend.create(job)
            except TransferJobError as error:
                refused[job.metadata.name or ""] = str(error)
            else:
                log.info("%s: TrialCreated: created trial %s", name, job.metadata.name)
        if plan.finished:
            return backend.get_sweep(name)
        if not plan.create:
            time.sleep(poll)


class _LogPrinter:
    """Prints a job's log lines from a background thread while `wait` watches its status."""

    def __init__(self, backend: Backend, name: str) -> None:
        self._lines = backend.logs(name, follow=True, tail=None)
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=f"logs-{name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with contextlib.suppress(TransferJobError):
            for line in self._lines:
                if self._stopped:
                    return
                print(line, flush=True)

    def finish(self, grace: float) -> None:
        """Let the last lines of a finished job arrive (its log ends just after the final status),
        then stop printing: a wait that ended early must not leave output running behind it."""
        self._thread.join(grace)
        self._stopped = True


def _interactive() -> bool:
    """A terminal or a notebook is watching: progress bars help there and only clutter logs elsewhere."""
    try:
        from rich.console import Console
    except ImportError:  # rich comes with the `cli` extra; without it, no bars
        return False
    console = Console(stderr=True)
    return bool(console.is_terminal or console.is_jupyter)


class _ProgressDisplay:
    """A rich progress bar over epochs, with the latest metrics, drawn only when enabled."""

    def __init__(self, name: str, enabled: bool) -> None:
        self.name = name
        self.enabled = enabled
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> _ProgressDisplay:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[info]}"),
                console=Console(stderr=True),
            )
            self._progress.start()
            self._task = self._progress.add_task(self.name, total=None, info="Pending")
        return self

    def update(self, event: WatchEvent) -> None:
        if self._progress is None or self._task is None:
            return
        if isinstance(event, EpochCompleted):
            self._progress.update(
                self._task, completed=event.epoch, total=event.epochs, info=format_metrics(event.metrics)
            )
        elif isinstance(event, StepAdvanced):
            self._progress.update(self._task, info=format_step(event.progress))
        else:
            info = event.phase.value + (f": {event.reason}" if event.reason else "")
            self._progress.update(self._task, info=info, total=event.status.epochs)

    def __exit__(self, *_: object) -> None:
        if self._progress is not None:
            self._progress.stop()


def format_step(progress: StepProgressStatus) -> str:
    """`training epoch 3: 42.5% (310 img/s, 95 s left)`."""
    epoch = f" epoch {progress.epoch}" if progress.epoch else ""
    details = [f"{progress.images_per_second:g} img/s"] if progress.images_per_second else []
    if progress.remaining_seconds is not None:
        details.append(f"{progress.remaining_seconds} s left")
    more = f" ({', '.join(details)})" if details else ""
    return f"{progress.step}{epoch}: {progress.percent:g}%{more}"


def format_metrics(metrics: EpochMetrics) -> str:
    """`loss 0.4100 acc 0.8300 val_loss ...`, skipping what the trainer did not report."""
    parts = []
    for label, value in (
        ("loss", metrics.loss),
        ("acc", metrics.accuracy),
        ("val_loss", metrics.val_loss),
        ("val_acc", metrics.val_accuracy),
    ):
        if value is not None:
            parts.append(f"{label} {value:.4f}")
    return " ".join(parts)
