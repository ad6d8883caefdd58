"""`tj report` without a trainer run: per-class scores, the page's assembly, and where it reads from.

A report of a real job, opened in headless Chromium, is tested in tests/sdk/test_trainer_local.py.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest

from transferjob.cli import main
from transferjob.client import TransferJobClient
from transferjob.constants import MISCLASSIFIED_FILE
from transferjob.errors import JobNotReadyError, OutputUnreadableError
from transferjob.models import TransferJob
from transferjob.report import (
    CONTENT_SECURITY_POLICY,
    class_scores,
    output_folder,
    read_results,
    render_page,
    section,
)

#: One grey pixel, as a trainer's thumbnail would be embedded.
PIXEL = (
    "data:image/png;base64,"
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+kcQAAAABJRU5ErkJggg=="
)


@pytest.fixture()
def here(tmp_path: Path) -> TransferJobClient:
    return TransferJobClient("local", home=tmp_path / "home")


def finished_job(output: dict[str, Any], name: str = "fe", phase: str = "Succeeded") -> TransferJob:
    return TransferJob.model_validate(
        {
            "metadata": {"name": name},
            "spec": {
                "model": {"base": "MobileNetV2"},
                "data": {"source": {"hostPath": "/data"}},
                "output": {"location": output},
            },
            "status": {
                "phase": phase,
                "bestEpoch": 2,
                "model": {"uri": "/output/model.keras", "metricsUri": "/output/metrics.json"},
            },
        }
    )


def write_output(folder: Path, mistakes: list[dict[str, Any]] | None) -> None:
    """What the trainer leaves: metrics.json (camelCase, as `Finished.to_dict`) and misclassified.json."""
    folder.mkdir(parents=True, exist_ok=True)
    metrics = {
        "mode": "FeatureExtraction",
        "base": "MobileNetV2",
        "classes": ["cat", "dog & <fox>"],
        "epochsRun": 3,
        "bestEpoch": 2,
        "test": {"loss": 0.3, "accuracy": 0.75, "classes": 2, "confusionMatrix": [[3, 1], [0, 0]]},
        "history": [
            {"epoch": e, "loss": 1 / e, "accuracy": 0.5 + e / 10, "valLoss": 1.1 / e, "valAccuracy": 0.6}
            for e in (1, 2, 3)
        ],
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))
    if mistakes is not None:
        document = {"testImages": 4, "misclassified": 1, "images": mistakes}
        (folder / MISCLASSIFIED_FILE).write_text(json.dumps(document))


def test_class_scores_from_a_confusion_matrix() -> None:
    cat, dog, fox = class_scores([[8, 2, 0], [1, 9, 0], [0, 0, 0]], ["cat", "dog", "fox"])
    assert (cat.precision, cat.recall, cat.support) == (8 / 9, 0.8, 10)
    assert cat.f1 == pytest.approx(2 * (8 / 9) * 0.8 / (8 / 9 + 0.8))
    assert (dog.precision, dog.recall) == (9 / 11, 0.9)
    assert (fox.precision, fox.recall, fox.f1, fox.support) == (0.0, 0.0, 0.0, 0)  # never seen
    with pytest.raises(ValueError, match="must be 2x2"):
        class_scores([[1, 2, 3]], ["a", "b"])


def test_the_page_holds_everything_inline_and_escapes_names(tmp_path: Path, here: TransferJobClient) -> None:
    mistake = {"file": "test/dog/1.png", "true": "dog & <fox>", "predicted": "cat", "probability": 0.91}
    write_output(tmp_path / "out", [{**mistake, "thumbnail": PIXEL}, {**mistake, "thumbnail": "http://x/y"}])
    results = read_results(finished_job({"hostPath": str(tmp_path / "out")}), here)
    assert [m.thumbnail for m in results.mistakes or []] == [PIXEL, None]  # only data: URIs are shown
    page = render_page([section(results)], dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc))

    assert f'content="{CONTENT_SECURITY_POLICY}"' in page
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 3  # curves, confusion matrix, one thumbnail (the other has none)
    assert all(src.startswith("data:image/") for src in sources)
    assert not re.search(r"(href|src)=\"(https?:)?//", page)
    for src in sources[:2]:  # the two pictures are PNGs that decode
        from PIL import Image

        with Image.open(io.BytesIO(base64.b64decode(html.unescape(src).split(",", 1)[1]))) as picture:
            assert picture.format == "PNG" and picture.width > 100
    assert "dog &amp; &lt;fox&gt;" in page and "<fox>" not in page
    assert "1 wrong of 4 test images:" in page and "no thumbnail" in page
    # Per class, from the matrix: every "cat" said was right, 3 of 4 cats found; no dog in the test set.
    assert "<td>cat</td><td>1.0000</td><td>0.7500</td><td>0.8571</td><td>4</td>" in page
    assert "<td>dog &amp; &lt;fox&gt;</td><td>0.0000</td><td>0.0000</td><td>0.0000</td><td>0</td>" in page
    assert "hostPath: " + str(tmp_path / "out") in page  # the spec, as YAML


def test_a_job_from_an_older_trainer_is_shown_without_mistakes(
    tmp_path: Path, here: TransferJobClient
) -> None:
    write_output(tmp_path, None)
    results = read_results(finished_job({"uri": f"file://{tmp_path}"}), here)
    assert results.mistakes is None and results.history[-1].epoch == 3 and results.best_epoch == 2
    page = render_page([section(results), section(results)], dt.datetime.now(dt.timezone.utc))
    assert f"has no {MISCLASSIFIED_FILE}" in page and "repeat(2, minmax(0, 1fr))" in page


def test_where_the_output_cannot_be_read_the_error_says_where_and_why(
    tmp_path: Path, here: TransferJobClient
) -> None:
    assert output_folder(finished_job({"hostPath": "/srv/fe"}), here) == Path("/srv/fe")
    with pytest.raises(OutputUnreadableError, match="'models' exists only in a cluster: use the kubernetes"):
        output_folder(finished_job({"pvc": {"claimName": "models", "subPath": "fe"}}), here)
    with pytest.raises(OutputUnreadableError, match="to s3://models/fe; tj report reads a folder on this"):
        output_folder(finished_job({"uri": "s3://models/fe"}), here)
    with pytest.raises(OutputUnreadableError, match=f"{tmp_path}/metrics.json does not exist"):
        read_results(finished_job({"hostPath": str(tmp_path)}), here)
    write_output(tmp_path, None)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    (tmp_path / "metrics.json").write_text(json.dumps({**metrics, "classes": ["cat"]}))
    with pytest.raises(OutputUnreadableError, match=r"not the trainer's metrics file: .* must be 1x1"):
        read_results(finished_job({"hostPath": str(tmp_path)}), here)
    (tmp_path / "metrics.json").write_text("{")
    with pytest.raises(OutputUnreadableError, match="is not valid JSON"):
        read_results(finished_job({"hostPath": str(tmp_path)}), here)
    write_output(tmp_path, [{"file": "test/a/1.png"}])
    with pytest.raises(OutputUnreadableError, match=r"misclassified\.json is not the trainer's record of"):
        read_results(finished_job({"hostPath": str(tmp_path)}), here)
    with pytest.raises(JobNotReadyError, match=r"phase Running\): a report needs .*\(tj wait fe\)"):
        read_results(finished_job({"hostPath": str(tmp_path)}, phase="Running"), here)


def test_tj_report_writes_the_page_of_a_local_job_and_its_source(
    tj_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A local fine-tuning job names its source by the model file (`tj fine-tune` sets fromModel):
    the report finds that job and puts it first."""
    jobs = tj_home / "jobs"
    for name, spec in (
        ("fe", {"mode": "FeatureExtraction"}),
        ("ft", {"mode": "FineTuning", "model": {"base": "MobileNetV2", "fromModel": "/o/fe/model.keras"}}),
    ):
        job = finished_job({"hostPath": str(tmp_path / name)}, name=name)
        spec_dict = {**job.spec.to_dict(), **spec}
        job = TransferJob.model_validate({**job.to_dict(), "spec": spec_dict})
        uri = f"/o/{name}/model.keras"
        status = {"phase": "Succeeded", "model": {"uri": uri, "metricsUri": "/o/metrics.json"}}
        (jobs / name).mkdir(parents=True)
        (jobs / name / "job.yaml").write_text(job.to_yaml())
        (jobs / name / "status.json").write_text(json.dumps(status))
        write_output(tmp_path / name, [])
    assert main(["report", "ft", "--local", "-o", str(tmp_path / "r.html")]) == 0
    assert capsys.readouterr().out == f"wrote {tmp_path / 'r.html'} (fe, ft)\n"
    page = (tmp_path / "r.html").read_text()
    assert page.index("<h2>fe ") < page.index("<h2>ft ") and "got every test image right" in page

    assert main(["report", "fe", "--local", "-o", str(tmp_path / "missing" / "r.html")]) == 2
    assert "tj: error: cannot write" in capsys.readouterr().err
    (tmp_path / "fe" / "metrics.json").unlink()
    assert main(["report", "fe", "--local", "-o", str(tmp_path / "r.html")]) == 1
    missing = f"tj: error: TransferJob 'fe': {tmp_path}/fe/metrics.json does not exist"
    assert missing in capsys.readouterr().err
