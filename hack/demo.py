"""`make demo`: the TransferJob story on a laptop, from nothing to two trained models and back to nothing.

1. A real single-node cluster on this machine (docs/real-node.md): our control plane, containerd, the
   kubelet, kube-proxy and a TEST-ONLY fake GPU plugin, with our trainer and operator images built
   from their Dockerfiles (cached after the first run) and imported. It needs root.
2. The operator installed as a platform team would: `kubectl apply -k hack/local-images` (manifests/
   with the local image names), two replicas in the restricted `transferjob-system` namespace.
3. The digits: 5-9 at 32x32 to learn, and a small CNN pretrained on 0-4 as the source network, on
   PersistentVolumes.
4. A FeatureExtraction TransferJob, then a FineTuning one that builds on it (`model.fromJob`), with each
   epoch's metrics printed as the operator writes them into `.status`, and `kubectl get pods -o wide`.
5. `kubectl get tj`, then everything is stopped, removed and the host restored (also on Ctrl-C).

Run from the repository root: `python hack/demo.py [--keep DIR]`.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from kubernetes import client

from transferjob import Phase, TransferJobClient, TransferJobStatus
from transferjob.client import EpochCompleted
from transferjob.constants import GROUP, PLURAL, VERSION
from transferjob_testing.cluster.node import missing_prerequisites
from transferjob_testing.cluster.real import RealCluster, install_operator, kubectl_binary, operator_logs
from transferjob_testing.cluster.volumes import hand_to_trainer, share_read_only, static_volume
from transferjob_testing.harness import WIDE_TEST_SPLIT, claim_specs, make_digits, transferjob

NAMESPACE = "demo"


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def follow(
    tj: TransferJobClient, name: str, cluster: RealCluster, timeout: float = 900.0
) -> TransferJobStatus:
    """Print phase changes and each epoch as the operator writes them into `.status` (a watch, not polls).

    When the job starts running, `kubectl get pods -o wide` shows its pod on the node.
    """
    final = TransferJobStatus()
    shown = False
    for event in tj.watch(name, timeout=timeout):
        if isinstance(event, EpochCompleted):
            m = event.metrics
            print(
                f"   {name}: epoch {event.epoch}/{event.epochs}  loss {_fmt(m.loss)}  "
                f"acc {_fmt(m.accuracy)}  "
                f"val_loss {_fmt(m.val_loss)}  val_acc {_fmt(m.val_accuracy)}",
                flush=True,
            )
            continue
        why = f"  ({event.reason}: {event.message})" if event.message else ""
        print(f"   {name}: {event.phase.value}{why}", flush=True)
        if event.phase is Phase.RUNNING and not shown:
            shown = True
            print(cluster.kubectl("get", "pods", "-n", NAMESPACE, "-o", "wide").stdout, flush=True)
        final = event.status
    return final


def compare(features: TransferJobStatus, finetune: TransferJobStatus) -> str:
    """Fine-tuning against the model it started from, in test images (the reference workflow's point)."""
    assert features.test is not None and finetune.test is not None
    total = sum(c.support for c in features.test.per_class)
    if not total:
        accuracies = f"{finetune.test.accuracy:.4f}, feature extraction {features.test.accuracy:.4f}"
        return f"test accuracy: fine-tuning {accuracies}"
    before, after = round(features.test.accuracy * total), round(finetune.test.accuracy * total)
    verdict = "gained" if after > before else "kept" if after == before else "LOST"
    return (
        f"fine-tuning {verdict} test images: {after}/{total} right "
        f"(feature extraction, where it started: {before}/{total})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--keep", type=Path, help="work in this folder and keep it (default: a temporary one)"
    )
    args = parser.parse_args(argv)
    problems = missing_prerequisites()
    if problems:
        print("the demo runs on a real node, which this machine cannot start:", file=sys.stderr)
        print("  " + "\n  ".join(problems), file=sys.stderr)
        return 2
    root = (args.keep or Path(tempfile.mkdtemp(prefix="tj-demo-"))).resolve()
    root.mkdir(parents=True, exist_ok=True)
    cluster = RealCluster(root / "cluster", gpus=2)
    try:
        say("building our images (cached after the first run) and starting a real node")
        cluster.start()
        print(cluster.kubectl("get", "nodes", "-o", "wide").stdout, flush=True)
        api = cluster.api

        say("installing the operator: kubectl apply -k hack/local-images")
        install_operator(cluster)
        print(cluster.kubectl("get", "pods", "-n", "transferjob-system", "-o", "wide").stdout, flush=True)

        say("preparing digits 5-9 (32x32) and a small CNN pretrained on digits 0-4 (takes a minute)")
        data, source = make_digits(root / "data", split=WIDE_TEST_SPLIT)
        share_read_only(root / "data")
        models = root / "models"
        # A kept folder's models from an earlier demo belong to that demo's jobs (their owner.json):
        # this demo's jobs would fail there with OutputInUse, so they start from an empty folder.
        shutil.rmtree(models, ignore_errors=True)
        hand_to_trainer(models)
        client.CoreV1Api(api).create_namespace(
            {"metadata": {"name": NAMESPACE, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}
        )
        static_volume(api, NAMESPACE, "datasets", root / "data")
        static_volume(api, NAMESPACE, "models", models)
        custom = client.CustomObjectsApi(api)
        fe, ft = claim_specs(data.name, source.name, epochs=5)

        say("feature extraction: a new head on the frozen pretrained CNN")
        custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, transferjob("features", fe))

        say("fine-tuning from it (model.fromJob: features); it waits until features has succeeded")
        custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, transferjob("finetune", ft))
        tj = TransferJobClient(namespace=NAMESPACE, kubeconfig=cluster.kubeconfig)
        results = [follow(tj, "features", cluster), follow(tj, "finetune", cluster)]

        say(f"{kubectl_binary()} get tj,pods -o wide")
        print(cluster.kubectl("get", "tj,pods", "-n", NAMESPACE, "-o", "wide").stdout, flush=True)
        ok = all(r.phase is Phase.SUCCEEDED for r in results)
        if ok:
            say(compare(*results))
        else:
            print(operator_logs(cluster))
        say("done" if ok else "a TransferJob failed: see the conditions above and the operator log")
        return 0 if ok else 1
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    finally:
        say("tearing down: the node's pods and processes stop, the host's network and settings are restored")
        cluster.stop()
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
