"""The reference workflow on a cluster: MobileNetV2 feature extraction on cats-vs-dogs, then fine-tuning.

Assumes the operator is installed, and PVCs `datasets` (with catsVsDogs/{train,val,test}/{cats,dogs})
and `models` exist in the namespace. Submits manifests/examples/01-feature-extraction.yaml, submits the
fine-tuning job straight away (`fromJob`: the operator starts it once the first one has succeeded),
follows both, and saves both learning curves. Expected test accuracy: about 0.97, then about 0.99.

    python examples/03-cluster-cats-vs-dogs/example.py [--namespace NS] [--kubeconfig FILE]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from transferjob import JobFailedError, TransferJob, TransferJobClient
from transferjob.plot import plot_curves

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests" / "examples"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", "--namespace")
    parser.add_argument("--kubeconfig")
    args = parser.parse_args()
    client = TransferJobClient(namespace=args.namespace, kubeconfig=args.kubeconfig)

    features = client.submit(TransferJob.from_yaml((MANIFESTS / "01-feature-extraction.yaml").read_text()))
    tuned = client.fine_tune(from_job=features, epochs=10)  # fromJob: waits for `features` in the cluster
    try:
        for name in (features, tuned):
            job = client.wait(name, progress=True)
            assert job.status and job.status.test
            print(f"{name}: test accuracy {job.status.test.accuracy:.4f}, best epoch {job.status.best_epoch}")
            plot_curves(job, f"{name}.png")
    except JobFailedError as error:
        print(f"{error.name} failed: {error.reason}: {error.message}")
        for event in client.events(error.name):
            print(f"  {event.type} {event.reason}: {event.message}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
