"""`tj`: the TransferJob command line, a thin layer over `TransferJobClient`.

Everything here is argument parsing and printing; what a command does is one client call, so the CLI
and a notebook behave the same. Exit codes let scripts follow a job: 0 succeeded, 1 failed (or an
operation failed), 2 usage errors and invalid specs, 124 timed out (like `timeout(1)`), 130 interrupted.
Errors are one line each on stderr, never a traceback; the SDK's warnings (a spec that will learn
nothing, a local job record that cannot be read and is left out of `tj list`) are `tj: warning: ...`
lines on stderr, as kubectl prints the API server's warnings.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

import yaml

from transferjob import yamlio
from transferjob.client import (
    EpochCompleted,
    PhaseChanged,
    StepAdvanced,
    TransferJobClient,
    WatchEvent,
    format_metrics,
    format_step,
)
from transferjob.errors import (
    JobFailedError,
    JobNotFoundError,
    JobTimeoutError,
    SpecError,
    SpecWarning,
    SweepFailedError,
    SweepNotFoundError,
    TransferJobError,
)
from transferjob.models import Phase, TransferJob
from transferjob.sweeps import Goal, TransferSweep

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 124
EXIT_INTERRUPTED = 130


class UsageError(TransferJobError):
    """Bad input from the command line (a missing file, an unreadable manifest): exit code 2."""


# ------------------------------------------------------------------------------------------ parser


def _global_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """Options valid before or after the command (`tj --local run ...` and `tj run ... --local`)."""
    default: Any = argparse.SUPPRESS if suppress else None
    group = parser.add_argument_group("backend")
    group.add_argument(
        "--backend",
        choices=("kubernetes", "local"),
        default=default,
        help="where jobs run (default: kubernetes)",
    )
    group.add_argument(
        "--local",
        dest="backend",
        action="store_const",
        const="local",
        default=default,
        help="same as --backend local: run on this machine, jobs kept in $TJ_HOME (~/.transferjob)",
    )
    group.add_argument("--kubeconfig", default=default, help="kubeconfig file (default: $KUBECONFIG)")
    group.add_argument("--context", default=default, help="kubeconfig context (default: the current one)")
    group.add_argument(
        "-n", "--namespace", default=default, help="namespace (default: the kubeconfig context's)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tj",
        description="Run and follow TransferJobs (transfer learning) on Kubernetes or on this machine.",
        epilog="Exit codes: 0 succeeded, 1 failed, 2 usage error or invalid spec, 124 timed out.",
    )
    _global_options(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_, description=help_)
        _global_options(sub, suppress=True)
        return sub

    def timeout_option(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--timeout", type=float, help="give up after this many seconds (exit code 124)")

    sub = command("submit", "Create a TransferJob from a manifest; print its name.")
    sub.add_argument("-f", "--filename", required=True, help="TransferJob YAML ('-' for stdin)")
    sub.add_argument("--name", help="job name (default: metadata.name, else generated)")
    sub.add_argument("--wait", action="store_true", help="wait for the outcome; the exit code follows it")
    timeout_option(sub)

    sub = command("run", "Create a TransferJob and follow it to the end (use --local for this machine).")
    sub.add_argument("-f", "--filename", required=True, help="TransferJob YAML ('-' for stdin)")
    sub.add_argument("--name", help="job name (default: metadata.name, else generated)")
    timeout_option(sub)

    sub = command("get", "Show one TransferJob.")
    sub.add_argument("name")
    sub.add_argument("-o", "--output", choices=("table", "yaml", "json"), default="table")

    sub = command("list", "List TransferJobs.")
    sub.add_argument("-l", "--selector", help="label selector, e.g. team=vision")
    sub.add_argument("-o", "--output", choices=("table", "yaml", "json"), default="table")

    sub = command("watch", "Follow a job's epochs live until it finishes.")
    sub.add_argument("name")
    timeout_option(sub)

    sub = command("wait", "Wait for a job to finish; the exit code follows its outcome.")
    sub.add_argument("name")
    timeout_option(sub)

    sub = command("logs", "Print the trainer's output.")
    sub.add_argument("name")
    sub.add_argument("-f", "--follow", action="store_true", help="follow until the job finishes")
    sub.add_argument("--tail", type=_non_negative, help="start with the last N lines")

    sub = command("events", "Show what happened to a job.")
    sub.add_argument("name")

    sub = command("delete", "Delete a job (stops its training).")
    sub.add_argument("name")

    sub = command(
        "sweep",
        "Run a TransferSweep (-f FILE), show its trials sorted by the objective (show NAME), or delete it "
        "with its trials (delete NAME).",
    )
    sub.add_argument("action", nargs="?", choices=("show", "delete"), help="show or delete NAME")
    sub.add_argument("name", nargs="?", help="the sweep (with show or delete)")
    sub.add_argument("-f", "--filename", help="TransferSweep YAML ('-' for stdin): create it")
    sub.add_argument("--wait", action="store_true", help="with -f: wait for the outcome, then show it")
    timeout_option(sub)

    sub = command(
        "plot",
        "Save the loss and accuracy curves (training vs validation) as an image; for a sweep, the "
        "objective per trial and the learning curves of the best trials.",
    )
    sub.add_argument("name")
    sub.add_argument("-o", "--output", required=True, help="image file, e.g. curves.png")

    sub = command("fine-tune", "Submit a FineTuning job that continues a FeatureExtraction job's model.")
    sub.add_argument("from_job", metavar="FROM_JOB")
    sub.add_argument("--name", help="job name (default: FROM_JOB-finetune)")
    sub.add_argument("--epochs", type=int, help="maximum epochs (default 10)")
    sub.add_argument("--learning-rate", type=float, help="learning rate (default 1e-5)")
    sub.add_argument("--fine-tune-at", help="first trainable layer, name or index (default: the base's)")
    sub.add_argument("--wait", action="store_true", help="wait for the outcome; the exit code follows it")
    timeout_option(sub)

    sub = command(
        "serve", "Print a KServe InferenceService that serves a job's SavedModel (--apply creates it)."
    )
    sub.add_argument("name")
    sub.add_argument("--name", dest="service_name", help="InferenceService name (default: the job's)")
    sub.add_argument("--service-account", help="the predictor's ServiceAccount (object-store credentials)")
    sub.add_argument("--apply", action="store_true", help="create it in the cluster instead of printing it")
    sub.add_argument("-o", "--output", choices=("yaml", "json"), default="yaml")

    sub = command("report", "Write one HTML page on a finished job (beside the job it fine-tuned from).")
    sub.add_argument("name")
    sub.add_argument("-o", "--output", required=True, help="HTML file, e.g. report.html")

    sub = command("predict", "Run a job's exported model on image files here; print the top classes.")
    sub.add_argument(
        "model",
        metavar="NAME|PATH",
        help="a job whose output is on this machine, or a SavedModel folder (a path: it has a '/')",
    )
    sub.add_argument("images", nargs="+", metavar="IMAGE|FOLDER", help="image files, or folders of them")
    sub.add_argument("--top", type=_positive, default=3, help="classes shown per image (default 3)")
    sub.add_argument("-o", "--output", choices=("table", "json"), default="table")

    sub = commands.add_parser(
        "datasets",
        help="Write a small image dataset (e.g. digits) in the trainer's layout.",
        add_help=False,
    )
    sub.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


# ---------------------------------------------------------------------------------------- commands


def read_manifest(filename: str) -> TransferJob:
    """A TransferJob from a YAML file; problems become `SpecError` lines naming the field."""
    return TransferJob.model_validate(_read_yaml(filename, "TransferJob"))


def read_sweep(filename: str) -> TransferSweep:
    """A TransferSweep from a YAML file; problems become `SpecError` lines naming the field."""
    return TransferSweep.model_validate(_read_yaml(filename, "TransferSweep"))


def _read_yaml(filename: str, kind: str) -> dict[str, Any]:
    try:
        text = sys.stdin.read() if filename == "-" else Path(filename).read_text()
    except OSError as error:
        raise UsageError(f"cannot read {filename}: {error.strerror or error}") from error
    try:
        data = yamlio.load(text)
    except yaml.YAMLError as error:
        raise UsageError(f"{filename} is not valid YAML: {error}") from error
    if not isinstance(data, dict):
        raise UsageError(f"{filename} does not hold a {kind} manifest (a YAML mapping)")
    return data


def make_client(args: argparse.Namespace) -> TransferJobClient:
    if args.backend == "local":
        return TransferJobClient("local")
    return TransferJobClient(
        "kubernetes", namespace=args.namespace, kubeconfig=args.kubeconfig, context=args.context
    )


def _age(created: dt.datetime | None) -> str:
    if created is None:
        return "-"
    seconds = int((dt.datetime.now(dt.timezone.utc) - created).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def job_row(job: TransferJob) -> list[str]:
    """The columns of `kubectl get tj`: name, phase, mode, model, epoch, val accuracy, test accuracy, age."""
    status = job.status
    metrics = status.metrics if status else None
    epoch = (
        f"{status.epoch or 0}/{status.epochs or '?'}" if status and (status.epoch or status.epochs) else "-"
    )
    return [
        job.metadata.name or "",
        status.phase.value if status and status.phase else "-",
        job.spec.mode.value,
        job.spec.model.base,
        epoch,
        f"{metrics.val_accuracy:.4f}" if metrics and metrics.val_accuracy is not None else "-",
        f"{status.test.accuracy:.4f}" if status and status.test else "-",
        _age(job.metadata.creation_timestamp),
    ]


def print_table(rows: list[list[str]], out: TextIO) -> None:
    header = ["NAME", "PHASE", "MODE", "MODEL", "EPOCH", "VAL-ACC", "TEST-ACC", "AGE"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        out.write(
            "   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() + "\n"
        )


def print_objects(jobs: list[TransferJob], output: str, out: TextIO, single: bool) -> None:
    if output == "table":
        print_table([job_row(job) for job in jobs], out)
        return
    data: Any = (
        jobs[0].to_dict()
        if single
        else {"apiVersion": "v1", "kind": "List", "items": [j.to_dict() for j in jobs]}
    )
    out.write(
        json.dumps(data, indent=2) + "\n" if output == "json" else yaml.safe_dump(data, sort_keys=False)
    )


def follow(client: TransferJobClient, name: str, timeout: float | None, out: TextIO) -> int:
    """Show a job's progress until it ends (a live table on a terminal, plain lines otherwise)."""
    events = client.watch(name, timeout=timeout)
    final = _follow_live(events, out) if out.isatty() else _follow_plain(events, out)
    if final is None:
        return EXIT_FAILED
    if final.phase is Phase.FAILED:
        sys.stderr.write(f"tj: TransferJob {name!r} failed: {final.reason}: {final.message}\n")
        return EXIT_FAILED
    test = final.status.test
    out.write(f"{name} succeeded" + (f": test accuracy {test.accuracy:.4f}" if test else "") + "\n")
    if final.status.model is not None:
        out.write(f"model: {final.status.model.uri}\n")
    return EXIT_OK


def _follow_plain(events: Iterable[WatchEvent], out: TextIO) -> PhaseChanged | None:
    final = None
    for event in events:
        out.write(_describe(event) + "\n")
        out.flush()
        if isinstance(event, PhaseChanged) and event.finished:
            final = event
    return final


def _describe(event: WatchEvent) -> str:
    if isinstance(event, EpochCompleted):
        return f"epoch {event.epoch}/{event.epochs or '?'}  {format_metrics(event.metrics)}"
    if isinstance(event, StepAdvanced):
        return format_step(event.progress)
    reason = f" ({event.reason}: {event.message})" if event.reason and event.message else ""
    return f"phase {event.phase.value}{reason}"


def _follow_live(events: Iterable[WatchEvent], out: TextIO) -> PhaseChanged | None:
    from rich.console import Console, Group
    from rich.live import Live
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    console = Console(file=out)
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
    )
    task = progress.add_task("Pending", total=None)
    table = Table("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds")
    final = None
    with Live(Group(progress, table), console=console, refresh_per_second=4):
        for event in events:
            if isinstance(event, EpochCompleted):
                m = event.metrics
                cells = [m.loss, m.accuracy, m.val_loss, m.val_accuracy, m.seconds]
                table.add_row(str(event.epoch), *("-" if v is None else f"{v:.4f}" for v in cells))
                progress.update(task, completed=event.epoch, total=event.epochs)
            elif isinstance(event, StepAdvanced):
                progress.update(task, description=format_step(event.progress))
            else:
                progress.update(task, description=event.phase.value, total=event.status.epochs)
                if event.finished:
                    final = event
    return final


def _wait_outcome(client: TransferJobClient, name: str, timeout: float | None, out: TextIO) -> int:
    job = client.wait(name, timeout=timeout)
    test = job.status.test if job.status else None
    out.write(f"{name} succeeded" + (f": test accuracy {test.accuracy:.4f}" if test else "") + "\n")
    return EXIT_OK


def run_command(args: argparse.Namespace, out: TextIO) -> int:
    if args.command == "datasets":
        from transferjob.datasets import main as datasets_main

        return int(datasets_main(args.args) or 0)
    if args.command == "predict" and "/" in args.model:
        return _predict(Path(args.model), args, out)
    client = make_client(args)
    cmd = args.command
    if cmd in ("submit", "run"):
        job = read_manifest(args.filename)
        name = client.submit(job, name=args.name)
        out.write(f"{name}\n")
        out.flush()
        if cmd == "run":
            return follow(client, name, args.timeout, out)
        return _wait_outcome(client, name, args.timeout, out) if args.wait else EXIT_OK
    if cmd == "fine-tune":
        at = args.fine_tune_at
        name = client.fine_tune(
            args.from_job,
            name=args.name,
            epochs=args.epochs,
            learning_rate=args.learning_rate,
            fine_tune_at=int(at) if at is not None and at.isdigit() else at,
        )
        out.write(f"{name}\n")
        return _wait_outcome(client, name, args.timeout, out) if args.wait else EXIT_OK
    if cmd in ("get", "list"):
        jobs = [client.get(args.name)] if cmd == "get" else client.list(args.selector)
        print_objects(jobs, args.output, out, single=cmd == "get")
    elif cmd == "watch":
        return follow(client, args.name, args.timeout, out)
    elif cmd == "wait":
        return _wait_outcome(client, args.name, args.timeout, out)
    elif cmd == "logs":
        for line in client.logs(args.name, follow=args.follow, tail=args.tail):
            out.write(line + "\n")
            out.flush()
    elif cmd == "events":
        _print_events(client, args.name, out)
    elif cmd == "delete":
        client.delete(args.name)
        out.write(f"transferjob {args.name!r} deleted\n")
    elif cmd == "sweep":
        return _sweep(client, args, out)
    elif cmd == "plot":
        _plot(client, args.name, args.output, out)
    elif cmd == "serve":
        _serve(client, args, out)
    elif cmd == "report":
        _report(client, args.name, args.output, out)
    elif cmd == "predict":
        from transferjob.predict import local_model_folder

        return _predict(local_model_folder(client.get(args.model)), args, out)
    return EXIT_OK


def _print_events(client: TransferJobClient, name: str, out: TextIO) -> None:
    events = client.events(name)
    if not events:
        out.write(f"no events for {name}\n")
    for event in events:
        when = event.time.isoformat(timespec="seconds") if event.time else "-"
        count = f" (x{event.count})" if event.count > 1 else ""
        out.write(f"{when}  {event.type:<8} {event.reason:<20} {event.message}{count}\n")


def _plot(client: TransferJobClient, name: str, output: str, out: TextIO) -> None:
    """A TransferJob's curves; for a sweep of that name (no TransferJob has it), the sweep's plot."""
    from transferjob.plot import plot_curves, plot_sweep

    try:
        try:
            plot_curves(client.get(name), output)
        except JobNotFoundError:
            try:
                sweep = client.get_sweep(name)
            except SweepNotFoundError:
                raise TransferJobError(f"no TransferJob or TransferSweep named {name!r}") from None
            plot_sweep(sweep, output)
    except ValueError as error:
        raise TransferJobError(str(error)) from error
    out.write(f"wrote {output}\n")


def _sweep(client: TransferJobClient, args: argparse.Namespace, out: TextIO) -> int:
    if args.filename is not None:
        if args.action is not None:
            raise UsageError("tj sweep takes -f FILE, or show NAME, or delete NAME")
        name = client.sweep(read_sweep(args.filename))
        out.write(f"{name}\n")
        out.flush()
        if not args.wait:
            return EXIT_OK
        try:
            client.wait_sweep(name, timeout=args.timeout)
        finally:
            print_sweep(client.get_sweep(name), out)
        return EXIT_OK
    if args.action is None or args.name is None:
        raise UsageError("tj sweep takes -f FILE, or show NAME, or delete NAME")
    if args.action == "delete":
        client.delete_sweep(args.name)
        out.write(f"transfersweep {args.name!r} deleted (its trials with it)\n")
    else:
        print_sweep(client.get_sweep(args.name), out)
    return EXIT_OK


def sweep_rows(sweep: TransferSweep) -> list[list[str]]:
    """`tj sweep show`'s table: a header, then the trials, best objective first, those without one last."""
    status = sweep.status
    trials = list(status.trials) if status else []
    paths = sweep.spec.parameters.paths()
    sign = -1.0 if sweep.spec.objective.direction is Goal.MAXIMIZE else 1.0
    trials.sort(key=lambda t: (t.objective is None, sign * (t.objective or 0.0), t.index))
    metric = sweep.spec.objective.metric
    rows = [["INDEX", "NAME", "PHASE", *[p.upper() for p in paths], metric.upper(), "EPOCHS"]]
    for t in trials:
        values = [_cell(t.parameters.get(p)) for p in paths]
        objective = f"{t.objective:.4f}" if t.objective is not None else "-"
        epochs = str(t.epochs) if t.epochs is not None else "-"
        rows.append([str(t.index), t.name, t.phase.value, *values, objective, epochs])
    return rows


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def print_sweep(sweep: TransferSweep, out: TextIO) -> None:
    status = sweep.status
    phase = status.phase.value if status and status.phase else "Pending"
    line = f"{sweep.metadata.name}: {phase}"
    if status is not None:
        line += f", {status.finished_trials or 0} of {sweep.spec.max_trials} trials finished"
        if status.best_trial is not None:
            best = status.best_trial
            line += f"; best {best.name} ({sweep.spec.objective.metric} {best.objective:.4f})"
            if best.model is not None:
                line += f", model {best.model.uri}"
    out.write(line + "\n")
    rows = sweep_rows(sweep)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.write(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() + "\n"
        )


def _report(client: TransferJobClient, name: str, output: str, out: TextIO) -> None:
    from transferjob.report import write_report

    try:
        shown = write_report(client, name, output)
    except OSError as error:
        raise UsageError(f"cannot write {output}: {error.strerror or error}") from error
    out.write(f"wrote {output} ({', '.join(r.job.metadata.name or '' for r in shown)})\n")


def _serve(client: TransferJobClient, args: argparse.Namespace, out: TextIO) -> None:
    manifest = client.serve(
        args.name, service_name=args.service_name, service_account=args.service_account, apply=args.apply
    )
    if args.apply:
        metadata = manifest.get("metadata", {})
        where = f"namespace {metadata.get('namespace')!r}"
        out.write(f"{manifest.get('kind')} {metadata.get('name')!r} created in {where}\n")
    elif args.output == "json":
        out.write(json.dumps(manifest, indent=2) + "\n")
    else:
        out.write(yaml.safe_dump(manifest, sort_keys=False))


def _predict(model: Path, args: argparse.Namespace, out: TextIO) -> int:
    """Print each image's top classes; an image that cannot be read is an error line, and exit code 1."""
    from transferjob.predict import image_files, predict

    images = image_files(args.images)
    predictions = list(predict(model, images, args.top))
    failed = [p for p in predictions if p.error is not None]
    for prediction in failed:
        sys.stderr.write(f"tj: error: {prediction.image}: {prediction.error}\n")
    if args.output == "json":
        rows = [
            {"image": p.image, "error": p.error}
            if p.error is not None
            else {"image": p.image, "classes": p.classes, "scores": p.scores}
            for p in predictions
        ]
        out.write(json.dumps(rows, indent=2) + "\n")
    else:
        width = max(len(p.image) for p in predictions)
        for p in predictions:
            if p.error is None:
                ranked = "   ".join(
                    f"{name} {score:.4f}" for name, score in zip(p.classes, p.scores, strict=True)
                )
                out.write(f"{p.image.ljust(width)}   {ranked}\n")
    return EXIT_FAILED if failed else EXIT_OK


# -------------------------------------------------------------------------------------------- main


@contextmanager
def _spec_warnings_on_stderr() -> Iterator[None]:
    """Each `SpecWarning` as one `tj: warning: ...` line on stderr (every time, not once per place);
    other Python warnings are shown as Python shows them."""
    show = warnings.showwarning

    def show_warning(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if issubclass(category, SpecWarning):
            sys.stderr.write(f"tj: warning: {message}\n")
        else:
            show(message, category, *args, **kwargs)

    with warnings.catch_warnings():
        warnings.simplefilter("always", SpecWarning)
        warnings.showwarning = show_warning
        yield


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run `tj` with `argv` (default: the process's arguments); returns the exit code."""
    out = out or sys.stdout
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["datasets"]:  # all its arguments (--help too) belong to transferjob.datasets
        from transferjob.datasets import main as datasets_main

        return int(datasets_main(argv[1:]) or 0)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse printed its message (or the help)
        return int(exit_.code or 0)
    logged_warnings = logging.StreamHandler(sys.stderr)
    logged_warnings.setFormatter(logging.Formatter("tj: warning: %(message)s"))
    sdk_logger = logging.getLogger("transferjob")
    sdk_logger.addHandler(logged_warnings)
    try:
        with _spec_warnings_on_stderr():
            return run_command(args, out)
    except SpecError as error:
        for problem in error.problems:
            sys.stderr.write(f"tj: invalid spec: {problem}\n")
        return EXIT_USAGE
    except UsageError as error:
        sys.stderr.write(f"tj: error: {error}\n")
        return EXIT_USAGE
    except JobTimeoutError as error:
        sys.stderr.write(f"tj: {error}\n")
        return EXIT_TIMEOUT
    except (JobFailedError, SweepFailedError) as error:
        sys.stderr.write(f"tj: {error}\n")
        return EXIT_FAILED
    except TransferJobError as error:
        sys.stderr.write(f"tj: error: {error}\n")
        return EXIT_FAILED
    except KeyboardInterrupt:
        sys.stderr.write("tj: interrupted (the job keeps running; `tj delete` stops it)\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `tj logs NAME | head`
        return EXIT_OK
    finally:
        sdk_logger.removeHandler(logged_warnings)


if __name__ == "__main__":
    sys.exit(main())
