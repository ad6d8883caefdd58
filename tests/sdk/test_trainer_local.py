"""The real trainer through the local backend: the two exercises of the reference workflow, on digits.

The transfer task of the operator tests: a small CNN pretrained on digits 0-4 is the base, the job
transfers it to digits 5-9 (32x32). Tiny, but every part is real: TensorFlow training, progress lines,
the exported model that fine-tuning starts from.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from transferjob import Mode, Phase, TransferJob, TransferJobClient, TransferJobSpec
from transferjob.client import EpochCompleted, PhaseChanged
from transferjob.constants import MISCLASSIFIED_LIMIT
from transferjob.plot import plot_curves
from transferjob.report import write_report
from transferjob_testing.browser import check_page
from transferjob_testing.harness import make_digits

pytestmark = pytest.mark.trainer


def test_feature_extraction_then_fine_tuning_on_digits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TJ_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TJ_TRAINER", raising=False)
    data, source_model = make_digits(tmp_path, epochs=2)
    spec = TransferJobSpec.model_validate(
        {
            "model": {"base": str(source_model), "imageSize": 32},
            "data": {"source": {"hostPath": str(data)}, "augmentation": {"enabled": False}},
            "training": {"epochs": 2, "batchSize": 64, "learningRate": 0.001},
            "output": {"location": {"hostPath": str(tmp_path / "features")}},
            "resources": {"gpus": 0},
            "runPolicy": {"backoffLimit": 0},
        }
    )
    client = TransferJobClient("local")
    name = client.submit(TransferJob(spec=spec), name="digits-features")
    events = list(client.watch(name, timeout=240))
    final = events[-1]
    assert isinstance(final, PhaseChanged)
    assert final.phase is Phase.SUCCEEDED, (final.reason, final.message, list(client.logs(name, tail=20)))
    assert [e.epoch for e in events if isinstance(e, EpochCompleted)] == [1, 2]
    status = final.status
    assert status.test is not None and 0.0 <= status.test.accuracy <= 1.0
    assert status.model is not None and Path(status.model.uri.removeprefix("file://")).exists()
    assert [m.epoch for m in status.history] == [1, 2]
    figure = plot_curves(client.get(name), tmp_path / "curves.png")
    assert list(figure.axes[0].get_lines()[0].get_xdata()) == [1, 2]

    tuned = client.fine_tune(from_job=name, epochs=1, fine_tune_at=0)
    job = client.wait(tuned, timeout=240)
    assert job.spec.mode is Mode.FINE_TUNING and job.spec.model.from_model == status.model.uri
    assert job.status and job.status.phase is Phase.SUCCEEDED and job.status.test

    # tj report: both jobs side by side on one page, which headless Chromium shows whole and offline.
    report = tmp_path / "report.html"
    shown = write_report(client, tuned, report)
    assert [r.job.metadata.name for r in shown] == [name, tuned]
    thumbnails = [m for r in shown for m in r.mistakes or [] if m.thumbnail]
    wrong = [r.misclassified for r in shown]
    assert all(r.mistakes is not None for r in shown)
    assert len(thumbnails) == sum(min(w or 0, MISCLASSIFIED_LIMIT) for w in wrong)
    page = check_page(report)
    assert page.errors == [] and page.external_requests() == []
    assert len(page.pictures) == 2 * 2 + len(thumbnails)  # curves and confusion matrix of each job
    assert all(p.width > 0 and p.height > 0 for p in page.pictures), page.pictures
    assert "FeatureExtraction" in page.text and "FineTuning" in page.text
