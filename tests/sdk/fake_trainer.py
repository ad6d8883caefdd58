"""A scripted stand-in for `transferjob_trainer`: same arguments, same protocol, no TensorFlow.

It lets the local backend's process handling (detaching, status files, retries, exit codes, deadlines,
log following) be tested in seconds. It follows `script.json` in the data folder (absent: succeed):
`epochs`, `sleep` (seconds per epoch), `fail_attempts` (attempts that fail before one succeeds),
`fail` (`reason`/`message`/`permanent` of a failure), `exit` (exit code of a failing attempt). The real
trainer runs in the tests marked `trainer`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from transferjob.models import EpochMetrics, ModelArtifacts, TestMetrics, TransferJobSpec
from transferjob.progress import EpochEnded, Failed, Finished, PhaseChanged, Started, encode


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spec", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--termination-log", required=True)
    parser.add_argument("--init-model")
    parser.add_argument("--job")
    parser.add_argument("--job-uid")
    args = parser.parse_args()
    spec = TransferJobSpec.model_validate(json.loads(Path(args.spec).read_text()))
    script_file = Path(args.data_dir) / "script.json"
    script = json.loads(script_file.read_text()) if script_file.exists() else {}
    out = Path(args.output_dir)
    attempts_file = out / "attempts"
    attempt = int(attempts_file.read_text()) + 1 if attempts_file.exists() else 1
    attempts_file.write_text(str(attempt))
    (out / "args.json").write_text(json.dumps(vars(args)))

    epochs = int(script.get("epochs", spec.training.epochs or 1))
    print("some library chatter that is not a protocol line", flush=True)
    print(encode(Started(mode=spec.mode.value, base=spec.model.base, epochs=epochs)), flush=True)
    print(encode(PhaseChanged(phase="training")), flush=True)
    history = []
    for epoch in range(1, epochs + 1):
        time.sleep(float(script.get("sleep", 0.05)))
        metrics = EpochMetrics(
            epoch=epoch,
            loss=1.0 / epoch,
            accuracy=1 - 0.5 / epoch,
            val_loss=1.2 / epoch,
            val_accuracy=0.9 - 0.4 / epoch,
        )
        history.append(metrics)
        print(encode(EpochEnded(epochs=epochs, metrics=metrics)), flush=True)
        if attempt <= int(script.get("fail_attempts", 0)) and epoch == 1:
            fail = script.get("fail", {})
            failed = Failed(
                reason=fail.get("reason", "TrainingError"),
                message=fail.get("message", f"attempt {attempt} broke"),
                permanent=bool(fail.get("permanent", False)),
            )
            if not script.get("silent_failure"):
                print(encode(failed), flush=True)
                Path(args.termination_log).write_text(encode(failed))
            return int(script.get("exit", 42 if failed.permanent else 1))
    model = out / "model.keras"
    model.write_text("not really a model")
    finished = Finished(
        epochs_run=epochs,
        best_epoch=epochs,
        test=TestMetrics(loss=0.1, accuracy=0.95),
        model=ModelArtifacts(uri=str(model)),
        history=history,
    )
    print(encode(finished), flush=True)
    Path(args.termination_log).write_text(encode(finished))
    return 0


if __name__ == "__main__":
    sys.exit(main())
