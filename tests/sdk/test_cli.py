"""`tj`, in-process (`cli.main([...])`) for output and as a subprocess for exit codes and stderr."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from transferjob import Phase, TransferJob
from transferjob.cli import EXIT_FAILED, EXIT_OK, EXIT_TIMEOUT, EXIT_USAGE, main

MakeJob = Callable[..., TransferJob]


def tj(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()


def tj_process(
    *argv: str, stdin: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """The installed entry point's code path: `python -m transferjob.cli`, environment inherited."""
    return subprocess.run(
        [sys.executable, "-m", "transferjob.cli", *argv],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ.copy(),
    )


def manifest(tmp_path: Path, job: TransferJob, name: str = "job.yaml") -> str:
    path = tmp_path / name
    path.write_text(job.to_yaml())
    return str(path)


def test_run_local_follows_to_the_end_and_exits_0(tj_home: Path, make_job: MakeJob, tmp_path: Path) -> None:
    result = tj_process("run", "-f", manifest(tmp_path, make_job({"epochs": 2}, name="clirun")), "--local")
    assert result.returncode == EXIT_OK, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "clirun"
    assert [line.split()[1] for line in lines if line.startswith("epoch ")] == ["1/2", "2/2"]
    assert "clirun succeeded: test accuracy 0.9500" in lines
    assert result.stderr == ""


def test_submit_of_a_spec_that_will_learn_nothing_warns_on_stderr(
    tj_home: Path, make_job: MakeJob, tmp_path: Path
) -> None:
    """As kubectl prints an API server's warning: created, named on stdout, one warning line on stderr."""
    job = make_job({"epochs": 1}, name="untrained")
    job.spec.model.weights = "none"
    result = tj_process("--local", "submit", "-f", manifest(tmp_path, job), "--wait")
    assert result.returncode == EXIT_OK, result.stderr
    assert result.stdout.splitlines()[0] == "untrained"
    (line,) = result.stderr.splitlines()
    assert line.startswith("tj: warning: spec.model.weights: none leaves MobileNetV2 untrained"), line
    assert "set weights: imagenet" in line


def test_run_of_a_failing_job_exits_1_with_the_reason(
    tj_home: Path, make_job: MakeJob, tmp_path: Path
) -> None:
    script = {
        "fail_attempts": 9,
        "fail": {"reason": "InvalidData", "message": "test/ is empty", "permanent": True},
    }
    result = tj_process("--local", "run", "-f", manifest(tmp_path, make_job(script, name="bad")))
    assert result.returncode == EXIT_FAILED
    assert result.stderr.strip() == "tj: TransferJob 'bad' failed: InvalidData: test/ is empty"


def test_submit_wait_timeout_exit_code(tj_home: Path, make_job: MakeJob, tmp_path: Path) -> None:
    job = make_job({"epochs": 40, "sleep": 0.3}, name="slow")
    result = tj_process("submit", "--local", "-f", manifest(tmp_path, job), "--wait", "--timeout", "1")
    assert result.returncode == EXIT_TIMEOUT
    assert result.stdout == "slow\n"
    assert result.stderr.startswith("tj: TransferJob 'slow' did not finish within 1s")
    assert tj("--local", "delete", "slow") == (EXIT_OK, "transferjob 'slow' deleted\n")


def test_invalid_spec_names_the_field_and_exits_2(tj_home: Path, make_job: MakeJob, tmp_path: Path) -> None:
    data = make_job().to_dict()
    data["spec"]["training"] = {"learnigRate": 0.1, "batchSize": 0}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    result = tj_process("--local", "submit", "-f", str(path))
    assert result.returncode == EXIT_USAGE
    lines = result.stderr.splitlines()
    assert "tj: invalid spec: spec.training.batchSize: Input should be greater than or equal to 1" in lines
    assert any(line.startswith("tj: invalid spec: spec.training.learnigRate:") for line in lines)
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["submit"], "the following arguments are required: -f/--filename"),
        (["get"], "the following arguments are required: name"),
        (["logs", "x", "--tail", "-3"], "argument --tail: must be >= 0, got -3"),
        (["--backend", "mars", "list"], "argument --backend: invalid choice: 'mars'"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(tj_home: Path, argv: list[str], message: str) -> None:
    result = tj_process(*argv)
    assert result.returncode == EXIT_USAGE
    assert message in result.stderr and "Traceback" not in result.stderr


def test_missing_file_and_missing_job_are_one_line_errors(tj_home: Path) -> None:
    result = tj_process("--local", "submit", "-f", "/nonexistent.yaml")
    assert (result.returncode, result.stderr) == (
        EXIT_USAGE,
        "tj: error: cannot read /nonexistent.yaml: No such file or directory\n",
    )
    result = tj_process("--local", "get", "ghost")
    assert (result.returncode, result.stderr) == (EXIT_FAILED, "tj: error: TransferJob 'ghost' not found\n")


def test_no_cluster_configured_is_a_clear_error(tmp_path: Path) -> None:
    env = {**os.environ, "KUBECONFIG": str(tmp_path / "missing"), "HOME": str(tmp_path)}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    result = subprocess.run(
        [sys.executable, "-m", "transferjob.cli", "list"], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == EXIT_FAILED
    assert result.stderr.startswith("tj: error: no kubeconfig at ") and "pass --kubeconfig" in result.stderr


def test_get_list_logs_events_watch_wait_in_process(tj_home: Path, make_job: MakeJob, tmp_path: Path) -> None:
    job = make_job({"epochs": 2}, name="inproc")
    job.metadata.labels["team"] = "vision"
    code, out = tj("submit", "--local", "-f", manifest(tmp_path, job), "--wait")
    assert (code, out) == (EXIT_OK, "inproc\ninproc succeeded: test accuracy 0.9500\n")

    code, out = tj("--local", "get", "inproc")
    header, row = out.splitlines()
    assert header.split() == ["NAME", "PHASE", "MODE", "MODEL", "EPOCH", "VAL-ACC", "TEST-ACC", "AGE"]
    assert row.split()[:7] == [
        "inproc",
        "Succeeded",
        "FeatureExtraction",
        "MobileNetV2",
        "2/2",
        "0.7000",
        "0.9500",
    ]
    code, out = tj("--local", "get", "inproc", "-o", "json")
    assert TransferJob.from_dict(json.loads(out)).status.phase is Phase.SUCCEEDED
    code, out = tj("--local", "get", "inproc", "-o", "yaml")
    assert TransferJob.from_yaml(out).metadata.name == "inproc"

    tj(
        "--local",
        "submit",
        "-f",
        manifest(tmp_path, make_job({"epochs": 1}, name="other"), "other.yaml"),
        "--wait",
    )
    code, out = tj("list", "--local")
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["inproc", "other"]
    code, out = tj("list", "--local", "-l", "team=vision", "-o", "yaml")
    assert [item["metadata"]["name"] for item in yaml.safe_load(out)["items"]] == ["inproc"]

    code, out = tj("--local", "logs", "inproc", "--tail", "1")
    assert code == EXIT_OK and json.loads(out)["event"] == "finished"
    code, out = tj("--local", "logs", "inproc", "-f")
    assert out.splitlines()[0] == "some library chatter that is not a protocol line"

    code, out = tj("--local", "events", "inproc")
    assert [line.split()[2] for line in out.splitlines()] == ["Started", "Succeeded"]

    code, out = tj("--local", "watch", "inproc")
    assert code == EXIT_OK
    assert out.splitlines() == [
        "epoch 1/2  loss 1.0000 acc 0.5000 val_loss 1.2000 val_acc 0.5000",
        "epoch 2/2  loss 0.5000 acc 0.7500 val_loss 0.6000 val_acc 0.7000",
        "phase Succeeded (Succeeded: test accuracy 0.9500 after 2 epochs (best epoch 2) model at "
        f"{tmp_path / 'out-0' / 'model.keras'})",
        "inproc succeeded: test accuracy 0.9500",
        f"model: {tmp_path / 'out-0' / 'model.keras'}",
    ]
    assert tj("--local", "wait", "inproc") == (EXIT_OK, "inproc succeeded: test accuracy 0.9500\n")


def test_fine_tune_command(tj_home: Path, make_job: MakeJob, tmp_path: Path) -> None:
    tj("--local", "submit", "-f", manifest(tmp_path, make_job({"epochs": 1}, name="fe")), "--wait")
    code, out = tj("--local", "fine-tune", "fe", "--epochs", "1", "--fine-tune-at", "100", "--wait")
    assert (code, out) == (EXIT_OK, "fe-finetune\nfe-finetune succeeded: test accuracy 0.9500\n")
    code, out = tj("--local", "get", "fe-finetune", "-o", "json")
    model = json.loads(out)["spec"]["model"]
    assert (model["fineTuneAt"], model["fromModel"]) == (100, str(tmp_path / "out-0" / "model.keras"))


def test_plot_writes_a_png(tj_home: Path, make_job: MakeJob, tmp_path: Path) -> None:
    from PIL import Image

    tj("--local", "submit", "-f", manifest(tmp_path, make_job({"epochs": 3}, name="curvy")), "--wait")
    png = tmp_path / "curves.png"
    assert tj("--local", "plot", "curvy", "-o", str(png)) == (EXIT_OK, f"wrote {png}\n")
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size == (1000, 400)
        assert len(image.getcolors(maxcolors=1 << 20) or []) > 10  # curves drawn, not a blank canvas


def test_plot_of_a_job_without_epochs_is_an_error(tj_home: Path, make_job: MakeJob, tmp_path: Path) -> None:
    tj("--local", "submit", "-f", manifest(tmp_path, make_job({"epochs": 0}, name="empty")), "--wait")
    result = tj_process("--local", "plot", "empty", "-o", str(tmp_path / "x.png"))
    assert result.returncode == EXIT_FAILED
    assert result.stderr == "tj: error: TransferJob 'empty' has no finished epoch to plot yet\n"


def test_datasets_delegates_to_the_dataset_writer(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    out = tmp_path / "digits"
    assert main(["datasets", "digits", str(out), "--digits", "0-1", "--size", "8"]) == EXIT_OK
    assert sorted(p.name for p in (out / "train").iterdir()) == ["0", "1"]
    result = tj_process("datasets", "--help")
    assert result.returncode == EXIT_OK and "digits" in result.stdout


def test_a_name_longer_than_a_label_is_an_invalid_spec_and_list_still_works(
    tj_home: Path, make_job: MakeJob, tmp_path: Path
) -> None:
    path = manifest(tmp_path, make_job({"epochs": 1}))
    result = tj_process("--local", "submit", "-f", path, "--name", "x" * 64)
    assert (result.returncode, result.stderr) == (
        EXIT_USAGE,
        "tj: invalid spec: metadata.name: String should have at most 63 characters\n",
    )
    result = tj_process("--local", "list")
    assert (result.returncode, result.stderr) == (EXIT_OK, "")


def test_an_unreadable_local_record_is_a_warning_line_in_list(
    tj_home: Path, make_job: MakeJob, tmp_path: Path
) -> None:
    assert tj("--local", "submit", "-f", manifest(tmp_path, make_job({"epochs": 1}, name="fine")))[0] == 0
    broken = tj_home / "jobs" / "broken"
    broken.mkdir()
    (broken / "job.yaml").write_text("spec: [not, a, spec]\n")
    (broken / "status.json").write_text("{}")
    result = tj_process("--local", "list")
    assert result.returncode == EXIT_OK and "fine" in result.stdout and "broken" not in result.stdout
    assert result.stderr.startswith("tj: warning: skipped: local job 'broken' has an unreadable record")
    assert result.stderr.count("\n") == 1
    result = tj_process("--local", "get", "broken")
    assert result.returncode == EXIT_FAILED and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


def test_a_bad_selector_and_an_unreachable_cluster_are_one_line_errors(tj_home: Path, tmp_path: Path) -> None:
    result = tj_process("--local", "list", "-l", "a in b")
    assert (result.returncode, result.stderr) == (
        EXIT_FAILED,
        "tj: error: invalid label selector requirement 'a in b'\n",
    )
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "c",
                "users": [{"name": "u", "user": {"token": "t"}}],
            }
        )
    )
    result = tj_process("--kubeconfig", str(kubeconfig), "get", "anything")
    assert result.returncode == EXIT_FAILED and result.stderr.count("\n") == 1
    assert result.stderr.startswith("tj: error: cannot reach the Kubernetes API: ")
