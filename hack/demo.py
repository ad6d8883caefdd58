"""`make demo`: the TransferJob story on a laptop, from nothing to two trained models and back to nothing.

1. A real control plane on loopback (etcd, kube-apiserver, controller manager, scheduler) and the test
   node agent, which runs pods as local processes (see docs/test-control-plane.md).
2. The CRD, the operator's RBAC, and the operator itself, running with its ServiceAccount's token.
3. The digits: 5-9 at 32x32 to learn, and a small CNN pretrained on 0-4 as the source network.
4. A FeatureExtraction TransferJob, then a FineTuning one that builds on it (`model.fromJob`), with each
   epoch's metrics printed as the operator writes them into `.status`.
5. `kubectl get tj`, then everything is stopped and removed (also on Ctrl-C).

Run from the repository root: `python hack/demo.py [--keep DIR]`.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from kubernetes import client, config

from transferjob import Phase, TransferJobClient, TransferJobStatus
from transferjob.client import EpochCompleted
from transferjob.constants import GROUP, PLURAL, VERSION
from transferjob_testing.cluster.agent_process import start_agent
from transferjob_testing.cluster.controlplane import ControlPlane
from transferjob_testing.harness import (
    WIDE_TEST_SPLIT,
    OperatorProcess,
    features_then_finetune,
    install,
    make_digits,
    service_account_kubeconfig,
    transferjob,
)

NAMESPACE = "demo"


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def follow(tj: TransferJobClient, name: str, timeout: float = 900.0) -> TransferJobStatus:
    """Print phase changes and each epoch as the operator writes them into `.status` (a watch, not polls)."""
    final = TransferJobStatus()
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


def print_table(custom: client.CustomObjectsApi, kubeconfig: Path) -> None:
    """`kubectl get tj`, or the same columns from the API where kubectl is not installed."""
    kubectl = shutil.which("kubectl")
    if kubectl:
        subprocess.run([kubectl, "--kubeconfig", str(kubeconfig), "get", "tj", "-n", NAMESPACE], check=False)
        return
    items = custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL)["items"]
    print(f"{'NAME':<10} {'PHASE':<10} {'MODE':<18} {'EPOCH':<6} {'VAL-ACC':<8} TEST-ACC")
    for item in items:
        status = item.get("status", {})
        print(
            f"{item['metadata']['name']:<10} {status.get('phase', ''):<10} {item['spec']['mode']:<18} "
            f"{status.get('epoch', ''):<6} {status.get('metrics', {}).get('valAccuracy', ''):<8} "
            f"{status.get('test', {}).get('accuracy', '')}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--keep", type=Path, help="work in this folder and keep it (default: a temporary one)"
    )
    args = parser.parse_args(argv)
    root = (args.keep or Path(tempfile.mkdtemp(prefix="tj-demo-"))).resolve()
    root.mkdir(parents=True, exist_ok=True)
    cp = ControlPlane(root / "cluster")
    agent = None
    operator = None
    try:
        say(f"starting a control plane in {root / 'cluster'}")
        cp.start()
        agent = start_agent(
            cp.kubeconfig, root / "node-agent", cp.pki.dir, nodes=1, gpus=2, cpu="4", memory="16Gi"
        )
        agent.wait_ready(cp.kubeconfig)
        api = config.new_client_from_config(config_file=str(cp.kubeconfig))

        say("installing the CRD and the operator's RBAC; starting the operator as its ServiceAccount")
        install(api)
        sa_kubeconfig = service_account_kubeconfig(api, cp.kubeconfig, root / "operator.kubeconfig")
        operator = OperatorProcess(sa_kubeconfig, root / "operator.log").start()
        print(f"   operator log: {operator.log_path}")

        say("preparing digits 5-9 (32x32) and a small CNN pretrained on digits 0-4 (takes a minute)")
        data, source = make_digits(root / "data", split=WIDE_TEST_SPLIT)
        client.CoreV1Api(api).create_namespace({"metadata": {"name": NAMESPACE}})
        custom = client.CustomObjectsApi(api)
        models = root / "models"
        models.mkdir(exist_ok=True)  # output hostPaths mount their parent folder, which must exist

        say("feature extraction: a new head on the frozen pretrained CNN")
        fe, ft = features_then_finetune(data, models, str(source), epochs=5)
        custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, transferjob("features", fe))

        say("fine-tuning from it (model.fromJob: features); it waits until features has succeeded")
        custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, transferjob("finetune", ft))
        tj = TransferJobClient(namespace=NAMESPACE, kubeconfig=cp.kubeconfig)
        results = [follow(tj, "features"), follow(tj, "finetune")]

        say("kubectl get tj")
        print_table(custom, cp.kubeconfig)
        ok = all(r.phase is Phase.SUCCEEDED for r in results)
        if ok:
            say(compare(*results))
        say("done" if ok else "a TransferJob failed: see the conditions above and the operator log")
        return 0 if ok else 1
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    finally:
        say("tearing down")
        if operator is not None:
            operator.stop()
        if agent is not None:
            agent.stop()
        cp.stop()
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
