"""`tj report`: one self-contained HTML page about a finished TransferJob, for people.

The page shows the spec, the learning curves (best epoch marked), the confusion matrix as a picture,
per-class precision, recall and F1, and the test images the model got wrong; a FineTuning job whose
model came from a FeatureExtraction job is shown beside that job, column by column. Everything is in
the one file: pictures are PNGs (matplotlib, as `tj plot`) and JPEG thumbnails as data: URIs, the
style is inline, and a Content-Security-Policy forbids the page any request, so it can be mailed,
attached to a ticket or opened offline and shows the same.

The figures come from the job's output folder, not from `.status`: metrics.json holds the whole
history and the confusion matrix of any number of classes (`.status` keeps the newest epochs and, past
`STATUS_CLASS_LIMIT` classes, no matrix), and misclassified.json (the trainer's, at most
`MISCLASSIFIED_LIMIT` images) the mistakes with thumbnails, so the data folder need not be readable
here. The output folder is found as `tj predict` finds the model: the spec's location on this machine
(a local job's, or a hostPath on the node this is), which `backends.local.local_path` resolves; for a
PersistentVolumeClaim, the backend looks up the volume it is bound to, which this machine can read
when it is a hostPath or local volume on this node (`Backend.claim_folder`). Object stores and other
volumes are named in the error: the SDK has no object-store client (the trainer's is in its image).

Layers: `class_scores` and `render_page` are pure (unit-tested); `read_results` reads files;
the pictures need matplotlib (the `cli` extra), imported only when drawn.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import math
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from transferjob.backends.local import local_path
from transferjob.client import TransferJobClient
from transferjob.constants import MISCLASSIFIED_FILE
from transferjob.errors import JobNotFoundError, JobNotReadyError, OutputUnreadableError
from transferjob.models import EpochMetrics, Mode, Phase, TestMetrics, TransferJob, TransferJobStatus

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Up to this many classes the confusion matrix's cells show their counts (beyond, only colours).
ANNOTATED_CLASSES = 20
#: Up to this many classes its axes name every class.
LABELLED_CLASSES = 50
#: No request of any kind: pictures are data: URIs and the style is inline.
CONTENT_SECURITY_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


@dataclass(frozen=True)
class ClassScores:
    """One class's test-set scores, from the confusion matrix."""

    name: str
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class Mistake:
    """A test image predicted wrong, as misclassified.json records it."""

    file: str
    true: str
    predicted: str
    probability: float
    thumbnail: str | None


@dataclass(frozen=True)
class JobResults:
    """What one job's output folder says about it, with the job itself."""

    job: TransferJob
    folder: str
    classes: list[str]
    history: list[EpochMetrics]
    best_epoch: int | None
    test: TestMetrics
    #: The trainer's record of mistakes; None when the output has no misclassified.json (a trainer
    #: older than it).
    mistakes: list[Mistake] | None
    misclassified: int | None
    test_images: int | None


@dataclass(frozen=True)
class Section:
    """One job's column of the page: its results and its two pictures (data: URIs)."""

    results: JobResults
    #: None when metrics.json holds no epoch.
    curves: str | None
    #: None when metrics.json holds no matrix.
    confusion: str | None


# ------------------------------------------------------------------------------------------- pure


def class_scores(matrix: Sequence[Sequence[int]], classes: Sequence[str]) -> list[ClassScores]:
    """Precision, recall and F1 of each class; rows are true classes, columns predicted ones.

    A class never predicted has precision 0, one without test images recall 0, and F1 is 0 when both
    are (scikit-learn's `zero_division=0`), as the trainer's metrics count.
    """
    if len(matrix) != len(classes) or any(len(row) != len(classes) for row in matrix):
        raise ValueError(
            f"a confusion matrix of {len(classes)} classes must be {len(classes)}x{len(classes)}"
        )
    scores = []
    for i, name in enumerate(classes):
        hits = matrix[i][i]
        predicted = sum(row[i] for row in matrix)
        support = sum(matrix[i])
        precision = hits / predicted if predicted else 0.0
        recall = hits / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        scores.append(ClassScores(name, precision, recall, f1, support))
    return scores


def _cell(value: float | int | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return str(value) if isinstance(value, int) else f"{value:.{digits}f}"


def _summary_rows(sections: Sequence[Section]) -> str:
    rows = []
    for section in sections:
        r = section.results
        status = r.job.status or TransferJobStatus()
        rows.append(
            "<tr>"
            + "".join(
                f"<td>{html.escape(str(cell))}</td>"
                for cell in (
                    r.job.metadata.name or "",
                    r.job.spec.mode.value,
                    r.job.spec.model.base,
                    len(r.classes),
                    len(r.history),
                    _cell(r.best_epoch),
                    _cell(r.test.accuracy),
                    _cell(r.test.loss),
                    status.completion_time.isoformat() if status.completion_time else "-",
                )
            )
            + "</tr>"
        )
    head = "".join(
        f"<th>{h}</th>"
        for h in (
            "job",
            "mode",
            "base",
            "classes",
            "epochs run",
            "best epoch",
            "test accuracy",
            "test loss",
            "finished",
        )
    )
    return f'<table class="summary"><tr>{head}</tr>{"".join(rows)}</table>'


def _class_table(results: JobResults) -> str:
    if not results.test.confusion_matrix:
        return "<p>The output holds no confusion matrix.</p>"
    rows = "".join(
        f"<tr><td>{html.escape(s.name)}</td><td>{_cell(s.precision)}</td><td>{_cell(s.recall)}</td>"
        f"<td>{_cell(s.f1)}</td><td>{s.support}</td></tr>"
        for s in class_scores(results.test.confusion_matrix, results.classes)
    )
    return (
        '<table class="classes"><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th>'
        f"<th>support</th></tr>{rows}</table>"
    )


def _mistakes(results: JobResults) -> str:
    if results.mistakes is None:
        return (
            f"<p>The output has no {MISCLASSIFIED_FILE} (the trainer that ran this job did not write "
            "one): run the job again to see its mistakes.</p>"
        )
    if not results.mistakes:
        return "<p>The model got every test image right.</p>"
    shown = len(results.mistakes)
    total = results.misclassified if results.misclassified is not None else shown
    of = f" of {results.test_images} test images" if results.test_images else ""
    note = f"{total} wrong{of}" + (f"; the {shown} most confident mistakes:" if shown < total else ":")
    figures = []
    for m in results.mistakes:
        picture = (
            f'<img src="{html.escape(m.thumbnail)}" alt="{html.escape(m.file)}">'
            if m.thumbnail
            else '<div class="missing">no thumbnail</div>'
        )
        figures.append(
            f'<figure title="{html.escape(m.file)}">{picture}<figcaption>'
            f'<span class="true">{html.escape(m.true)}</span> &rarr; '
            f'<span class="predicted">{html.escape(m.predicted)}</span> '
            f"({m.probability:.2f})</figcaption></figure>"
        )
    return f'<p>{html.escape(note)}</p><div class="mistakes">{"".join(figures)}</div>'


def _picture(source: str | None, alt: str, missing: str) -> str:
    return f'<img class="plot" src="{source}" alt="{alt}">' if source else f"<p>{missing}</p>"


def _job_section(section: Section) -> str:
    r = section.results
    name = html.escape(r.job.metadata.name or "")
    spec = yaml.safe_dump(
        {"metadata": {"name": r.job.metadata.name}, "spec": r.job.spec.to_dict()}, sort_keys=False
    )
    parts = [
        f'<section class="job"><h2>{name} <small>{r.job.spec.mode.value}, '
        f"{html.escape(r.job.spec.model.base)}</small></h2>",
        f'<p class="where">output: {html.escape(r.folder)}</p>',
        "<h3>Learning curves</h3>",
        _picture(section.curves, f"learning curves of {name}", "The output records no finished epoch."),
        "<h3>Confusion matrix</h3>",
        _picture(section.confusion, f"confusion matrix of {name}", "The output holds no confusion matrix."),
        f"<h3>Per class</h3>{_class_table(r)}",
        f"<h3>Test images it got wrong</h3>{_mistakes(r)}",
        f"<h3>Spec</h3><pre>{html.escape(spec)}</pre></section>",
    ]
    return "".join(parts)


STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 small { font-weight: normal; color: #555; }
.jobs { display: grid; gap: 2em; }
.job { min-width: 0; }
.where { color: #555; font-size: 0.9em; word-break: break-all; }
img.plot { max-width: 100%; height: auto; }
table { border-collapse: collapse; margin: 0.5em 0; }
td, th { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }
td:first-child, th:first-child { text-align: left; }
.mistakes { display: flex; flex-wrap: wrap; gap: 0.5em; }
.mistakes figure { margin: 0; width: 104px; font-size: 0.8em; text-align: center; }
.mistakes img { width: 96px; height: 96px; object-fit: contain; image-rendering: pixelated;
  background: #eee; }
.mistakes .missing { width: 96px; height: 96px; background: #eee; line-height: 96px; }
.true { color: #060; } .predicted { color: #a00; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
"""


def render_page(sections: Sequence[Section], generated: dt.datetime) -> str:
    """The whole page: a summary table, then one column per job (feature extraction first)."""
    names = " and ".join(html.escape(s.results.job.metadata.name or "") for s in sections)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">'
        f"<title>TransferJob report: {names}</title><style>{STYLE}</style></head><body>"
        f"<h1>TransferJob report: {names}</h1>"
        f'<p class="where">made {generated.isoformat(timespec="seconds")} by tj report</p>'
        f"{_summary_rows(sections)}"
        f'<div class="jobs" style="grid-template-columns: repeat({len(sections)}, minmax(0, 1fr))">'
        f"{''.join(_job_section(s) for s in sections)}</div></body></html>\n"
    )


# ------------------------------------------------------------------------------------------- files


def output_folder(job: TransferJob, client: TransferJobClient) -> Path:
    """The job's output folder on this machine; `OutputUnreadableError` naming it and why if it is not.

    The status has the paths the trainer saw (in a pod, its mount), so the folder comes from the spec:
    a hostPath or file location as the local backend resolves it, a claim's subPath in the folder of
    the volume it is bound to (a hostPath or local one; `Backend.claim_folder`).
    """
    location = job.spec.output.location
    if location.pvc is not None:
        return client.backend.claim_folder(location.pvc.claim_name) / location.pvc.sub_path
    folder = local_path(location, "spec.output.location")
    if not isinstance(folder, Path):
        raise OutputUnreadableError(
            f"TransferJob {job.metadata.name!r} wrote its output to {folder}; tj report reads a folder "
            "on this machine (a local job's, a hostPath, or a claim's hostPath or local volume on this "
            "node); the SDK does not read object stores"
        )
    return folder


def _read_json(path: Path, name: str | None) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as error:
        raise OutputUnreadableError(
            f"TransferJob {name!r}: {path} does not exist (the output folder is not on this machine, "
            "or was moved or deleted)"
        ) from error
    except OSError as error:
        raise OutputUnreadableError(f"TransferJob {name!r}: cannot read {path}: {error.strerror}") from error
    except ValueError as error:
        raise OutputUnreadableError(f"TransferJob {name!r}: {path} is not valid JSON: {error}") from error


def read_results(job: TransferJob, client: TransferJobClient) -> JobResults:
    """A succeeded job's metrics.json and misclassified.json; `JobNotReadyError` before it succeeded."""
    name = job.metadata.name
    status = job.status
    if status is None or status.phase is not Phase.SUCCEEDED or status.model is None:
        phase = status.phase.value if status and status.phase else "unknown"
        raise JobNotReadyError(
            f"TransferJob {name!r} has not succeeded (phase {phase}): a report needs its test "
            f"evaluation; wait for it (tj wait {name})"
        )
    folder = output_folder(job, client)
    metrics_name = posixpath.basename(status.model.metrics_uri or "metrics.json")
    metrics = _read_json(folder / metrics_name, name)
    try:
        test = TestMetrics.model_validate(metrics["test"])
        history = [EpochMetrics.model_validate(m) for m in metrics.get("history", [])]
        classes = [str(c) for c in metrics["classes"]]
        if test.confusion_matrix:
            class_scores(test.confusion_matrix, classes)  # the matrix fits the classes
    except (KeyError, TypeError, ValueError) as error:
        raise OutputUnreadableError(
            f"TransferJob {name!r}: {folder / metrics_name} is not the trainer's metrics file: {error}"
        ) from error
    mistakes = misclassified = test_images = None
    if (folder / MISCLASSIFIED_FILE).exists():
        recorded = _read_json(folder / MISCLASSIFIED_FILE, name)
        try:
            mistakes = [_mistake(m) for m in recorded.get("images", [])]
            misclassified, test_images = recorded.get("misclassified"), recorded.get("testImages")
        except (AttributeError, KeyError, TypeError, ValueError) as error:
            raise OutputUnreadableError(
                f"TransferJob {name!r}: {folder / MISCLASSIFIED_FILE} is not the trainer's record of "
                f"mistakes: {error!r}"
            ) from error
    return JobResults(
        job=job,
        folder=str(folder),
        classes=classes,
        history=history,
        best_epoch=metrics.get("bestEpoch", status.best_epoch),
        test=test,
        mistakes=mistakes,
        misclassified=misclassified,
        test_images=test_images,
    )


def _mistake(entry: dict[str, Any]) -> Mistake:
    """One entry of misclassified.json; a thumbnail that is not an inline picture is left out, so the
    page never refers to anything outside itself."""
    thumbnail = entry.get("thumbnail")
    return Mistake(
        file=str(entry["file"]),
        true=str(entry["true"]),
        predicted=str(entry["predicted"]),
        probability=float(entry["probability"]),
        thumbnail=thumbnail if isinstance(thumbnail, str) and thumbnail.startswith("data:image/") else None,
    )


def source_job(job: TransferJob, client: TransferJobClient) -> TransferJob | None:
    """The job whose model a FineTuning job started from: `model.fromJob`, or (locally, where
    `tj fine-tune` points at the file) the job that exported `model.fromModel`."""
    if job.spec.mode is not Mode.FINE_TUNING:
        return None
    if job.spec.model.from_job:
        try:
            return client.get(job.spec.model.from_job)
        except JobNotFoundError:  # deleted since: the report shows the fine-tuning alone
            return None
    wanted = job.spec.model.from_model
    if not wanted:
        return None
    return next(
        (
            other
            for other in client.list()
            if other.status and other.status.model and other.status.model.uri == wanted
        ),
        None,
    )


# ---------------------------------------------------------------------------------------- pictures


def _png(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def curves_picture(results: JobResults) -> str:
    """`tj plot`'s two panels, drawn from the whole history in metrics.json."""
    from transferjob.plot import plot_curves

    status = (results.job.status or TransferJobStatus()).model_copy(
        update={"history": results.history, "best_epoch": results.best_epoch, "test": results.test}
    )
    return _png(plot_curves(results.job.model_copy(update={"status": status})))


def confusion_picture(matrix: Sequence[Sequence[int]], classes: Sequence[str]) -> str:
    """The matrix as a heat map: true classes down, predicted across, counts in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    n = len(classes)
    side = min(10.0, 3.0 + 0.35 * n)
    figure = Figure(figsize=(side + 1.2, side), layout="constrained")
    axes = figure.subplots()
    image = axes.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axes, shrink=0.8)
    if n <= LABELLED_CLASSES:
        axes.set_xticks(range(n), list(classes), rotation=90 if n > 10 else 0)
        axes.set_yticks(range(n), list(classes))
    if n <= ANNOTATED_CLASSES:
        top = max((max(row) for row in matrix), default=0)
        for i, row in enumerate(matrix):
            for j, count in enumerate(row):
                colour = "white" if count > top / 2 else "black"
                axes.text(j, i, str(count), ha="center", va="center", color=colour, fontsize=9)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    return _png(figure)


def section(results: JobResults) -> Section:
    matrix = results.test.confusion_matrix
    confusion = confusion_picture(matrix, results.classes) if matrix else None
    return Section(results, curves_picture(results) if results.history else None, confusion)


def write_report(client: TransferJobClient, name: str, path: str | Path) -> list[JobResults]:
    """Write the page about `name` (and the job it fine-tuned from, if any) to `path`; returns what it
    showed, feature extraction first."""
    job = client.get(name)
    source = source_job(job, client)
    jobs = [source, job] if source is not None else [job]
    results = [read_results(j, client) for j in jobs]
    page = render_page([section(r) for r in results], dt.datetime.now(dt.timezone.utc))
    Path(path).write_text(page, encoding="utf-8")
    return results
