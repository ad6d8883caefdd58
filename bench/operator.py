"""Benchmark: how the operator keeps up with a burst, how fresh `.status` is, how much memory it takes.

Not a test; a script. One run, on the real single-node cluster of the tests (our control plane, the
kubelet, containerd, the trainer image; `transferjob_testing.cluster.real`, which needs root and no
other real node running), the operator as a subprocess authenticated as its ServiceAccount
(manifests/rbac/), exactly as in the e2e tests:

0. **ceiling**: the same 500 TransferJob creates before the operator starts (then deleted): how fast
   the API server takes custom objects at all; no operator can get Jobs faster than this.
1. **direct** (the limit): 500 suspended Jobs created straight through the API (the operator's own
   Job manifest, `jobs.build_job`), 8 client threads; jobs/s.
2. **status lag**: small real training jobs (digits, feature extraction, no early stopping). For each
   epoch: when the trainer printed the epoch line (`kubectl logs --timestamps`: containerd stamps
   each line when it reads it from the trainer's stdout) vs when a watch on TransferJobs first saw
   `.status.epoch` reach it. p50/p99.
3. **burst**: 500 TransferJobs created as fast as 8 client threads can, all with `runPolicy.suspend:
   true`, so the operator creates their Jobs *suspended* and no pod trains (the Job controller creates
   no pods for a suspended Job). Time until every one has its Job (watch on Jobs), jobs/s compared
   with (1), and apply -> Job latency per TransferJob (create call returned -> Job seen by a watch)
   p50/p99.
4. **memory**: 500 more suspended TransferJobs (1000 present), then the operator's VmRSS
   (`/proc/<pid>/status`) once all 1000 have Jobs and the status writes have settled.

Run: `.venv/bin/python bench/operator.py [--count 500] [--out bench/operator-results.json]`.
Targets: burst rate >= 50 % of direct, apply -> Job p50 < 100 ms, lag p50 < 2 s, RSS < 150 MiB.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from kubernetes import client, watch

from transferjob.constants import GROUP, PLURAL, VERSION
from transferjob.models import TransferJob
from transferjob.types import Json
from transferjob_operator import jobs
from transferjob_testing.cluster.controlplane import stop_process
from transferjob_testing.cluster.kube import kubectl, wait_for
from transferjob_testing.cluster.real import RealCluster
from transferjob_testing.cluster.volumes import hand_to_trainer
from transferjob_testing.harness import (
    POD_BASE,
    REPO_ROOT,
    digits_spec,
    install,
    make_digits,
    pod_data,
    service_account_kubeconfig,
    transferjob,
)

THREADS = 8


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def busy_share(pid: int, seconds: float) -> float:
    """The share of one core the process used over the next `seconds` (1.0 = a whole core)."""
    before, start = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(pid) - before) / (time.monotonic() - start)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


class Operator:
    """`python -m transferjob_operator` with default verbosity (as deployed), log to a file."""

    def __init__(self, kubeconfig: Path, log: Path, trainer_image: str) -> None:
        env = {k: v for k, v in os.environ.items() if k != "KUBERNETES_SERVICE_HOST"}
        args = ["--kubeconfig", str(kubeconfig), "-A", "--trainer-image", trainer_image]
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "transferjob_operator", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO_ROOT,
            )
        self.log = log

    def stop(self) -> None:
        stop_process(self.proc, grace=30)


class JobWatch:
    """Records when a watch first sees each Job (by TransferJob label) in one namespace."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.seen: dict[str, float] = {}
        self.batch: Any = client.BatchV1Api(api)
        self.ns = namespace
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for event in watch.Watch().stream(
                    self.batch.list_namespaced_job, self.ns, timeout_seconds=30, _request_timeout=60
                ):
                    now = time.monotonic()
                    name = event["raw_object"]["metadata"]["name"]
                    self.seen.setdefault(name, now)
                    if self._stop.is_set():
                        return
            except Exception:
                time.sleep(0.2)

    def stop(self) -> None:
        self._stop.set()


def create_many(make: Any, count: int) -> dict[str, float]:
    """Run `make(i)` for i in range(count) on THREADS threads; returns name -> monotonic time done."""
    done: dict[str, float] = {}

    def one(i: int) -> None:
        name = make(i)
        done[name] = time.monotonic()

    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(one, range(count)))
    return done


def new_namespace(core: Any, name: str) -> str:
    core.create_namespace({"metadata": {"name": name}})
    wait_for(lambda: _has_default_sa(core, name), timeout=60, what=f"default SA in {name}")
    return name


def _has_default_sa(core: Any, ns: str) -> bool:
    try:
        core.read_namespaced_service_account("default", ns)
        return True
    except client.ApiException:
        return False


def suspended_spec(data: Path, source: str, out: Path) -> Json:
    spec = digits_spec({"hostPath": str(data)}, {"hostPath": str(out)}, source, epochs=5)
    spec["runPolicy"] = {"suspend": True}
    return spec


def post_transferjob(custom: Any, ns: str, name: str, data: Path, source: str, root: Path) -> None:
    """Create one suspended TransferJob: the same body in every phase that creates them."""
    body = transferjob(name, suspended_spec(data, source, root / name))
    custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body, _preload_content=False)


def p50_p99_ms(seconds: list[float], name: str) -> Json:
    """`{name}_p50_ms` and `{name}_p99_ms` of durations given in seconds."""
    return {f"{name}_p{q}_ms": percentile(seconds, q) * 1000 for q in (50, 99)}


def bench_direct(api: client.ApiClient, data: Path, source: str, root: Path, count: int) -> Json:
    core: Any = client.CoreV1Api(api)
    batch: Any = client.BatchV1Api(api)
    ns = new_namespace(core, "bench-direct")
    tj = TransferJob.from_dict(
        {
            **transferjob("x", suspended_spec(data, source, root / "direct")),
            "metadata": {"name": "x", "namespace": ns},
        }
    )
    template = jobs.build_job(tj, None)
    template["metadata"].pop("ownerReferences", None)

    posts: list[float] = []

    def make(i: int) -> str:
        body = json.loads(json.dumps(template))
        body["metadata"]["name"] = f"direct-{i}"
        body["metadata"]["labels"][jobs.LABEL_JOB_NAME] = f"direct-{i}"
        sent = time.monotonic()
        batch.create_namespaced_job(ns, body, _preload_content=False)
        posts.append(time.monotonic() - sent)
        return f"direct-{i}"

    start = time.monotonic()
    done = create_many(make, count)
    elapsed = max(done.values()) - start
    return {
        "count": count,
        "seconds": elapsed,
        "jobs_per_s": count / elapsed,
        # One Job POST's own round trip under this load: a floor for apply -> Job in a burst.
        **p50_p99_ms(posts, "post"),
    }


def bench_single(api: client.ApiClient, data: Path, source: str, root: Path, count: int = 20) -> Json:
    """apply -> Job for TransferJobs applied one at a time (the next after the previous one's Job):
    the operator's own reaction time, without a burst's queueing in the API server."""
    core: Any = client.CoreV1Api(api)
    custom: Any = client.CustomObjectsApi(api)
    ns = new_namespace(core, "bench-single")
    jobs_seen = JobWatch(api, ns)
    time.sleep(1.0)
    latencies = []
    for i in range(count):
        name = f"single-{i}"
        post_transferjob(custom, ns, name, data, source, root)
        applied = time.monotonic()
        wait_for(lambda n=name: n in jobs_seen.seen, timeout=60, interval=0.005, what=f"Job {name}")
        latencies.append(jobs_seen.seen[name] - applied)
        time.sleep(0.3)
    jobs_seen.stop()
    return {"count": count, **p50_p99_ms(latencies, "latency")}


def bench_ceiling(api: client.ApiClient, data: Path, source: str, root: Path, count: int) -> Json:
    """The same burst of TransferJob creates with no operator running: the API server's own limit for
    custom objects (CRD schema and CEL validation, JSON only), which the burst rate cannot beat."""
    core: Any = client.CoreV1Api(api)
    custom: Any = client.CustomObjectsApi(api)
    ns = new_namespace(core, "bench-ceiling")

    def make(i: int) -> str:
        name = f"ceiling-{i}"
        post_transferjob(custom, ns, name, data, source, root)
        return name

    start = time.monotonic()
    done = create_many(make, count)
    elapsed = max(done.values()) - start
    custom.delete_collection_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)
    wait_for(
        lambda: not custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["items"],
        timeout=120,
        what="the ceiling TransferJobs deleted",
    )
    return {"count": count, "seconds": elapsed, "transferjobs_per_s": count / elapsed}


def bench_burst(
    api: client.ApiClient, ns: str, data: Path, source: str, root: Path, count: int, offset: int
) -> Json:
    custom: Any = client.CustomObjectsApi(api)
    jobs_seen = JobWatch(api, ns)
    time.sleep(1.0)  # the watch is established

    posts: list[float] = []

    def make(i: int) -> str:
        name = f"burst-{offset + i}"
        sent = time.monotonic()
        post_transferjob(custom, ns, name, data, source, root)
        posts.append(time.monotonic() - sent)
        return name

    start = time.monotonic()
    applied = create_many(make, count)
    applied_at = time.monotonic() - start
    wait_for(lambda: all(n in jobs_seen.seen for n in applied), timeout=900, interval=0.5, what="all Jobs")
    jobs_seen.stop()
    last = max(jobs_seen.seen[n] for n in applied)
    latencies = [max(0.0, jobs_seen.seen[n] - applied[n]) for n in applied]

    def statuses_written() -> bool:
        items = custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["items"]
        phases = {i["metadata"]["name"]: (i.get("status") or {}).get("phase") for i in items}
        return all(phases.get(n) == "Suspended" for n in applied)

    # Status writes of suspended jobs wait for the burst to end (Jobs first): the burst is over for
    # the operator when every TransferJob also says Suspended.
    wait_for(statuses_written, timeout=900, interval=1.0, what="all statuses Suspended")
    settled = time.monotonic() - start
    return {
        "count": count,
        "apply_seconds": applied_at,
        "seconds_until_all_jobs": last - start,
        "seconds_until_all_statuses": settled,
        "jobs_per_s": count / (last - start),
        **p50_p99_ms(latencies, "latency"),
        "latency_max_ms": max(latencies) * 1000,
        # The round trip of the TransferJob creates themselves in this burst: the API server's
        # response time under this load, which the operator's own Job POST also waits for.
        **p50_p99_ms(posts, "post"),
    }


def _parse_stamp(stamp: str) -> float:
    """RFC 3339 (nanoseconds allowed) -> epoch seconds."""
    head, _, frac = stamp.rstrip("Z").partition(".")
    base = dt.datetime.fromisoformat(head).replace(tzinfo=dt.timezone.utc).timestamp()
    return base + (float(f"0.{frac}") if frac else 0.0)


def bench_lag(
    cluster: RealCluster, data: Path, source: str, root: Path, jobs_count: int, epochs: int
) -> Json:
    """Epoch line in the pod log -> `.status.epoch` seen by a watch, on the same clock (wall time)."""
    api = cluster.api
    core: Any = client.CoreV1Api(api)
    custom: Any = client.CustomObjectsApi(api)
    ns = new_namespace(core, "bench-lag")
    status_seen: dict[tuple[str, int], float] = {}
    stop = threading.Event()

    def watch_status() -> None:
        while not stop.is_set():
            try:
                for event in watch.Watch().stream(
                    custom.list_namespaced_custom_object, GROUP, VERSION, ns, PLURAL, timeout_seconds=30
                ):
                    now = time.time()
                    obj = event["object"]
                    epoch = (obj.get("status") or {}).get("epoch") or 0
                    for e in range(1, epoch + 1):
                        status_seen.setdefault((obj["metadata"]["name"], e), now)
                    if stop.is_set():
                        return
            except Exception:
                time.sleep(0.2)

    watcher = threading.Thread(target=watch_status, daemon=True)
    watcher.start()
    names = [f"lag-{i}" for i in range(jobs_count)]
    for name in names:
        spec = digits_spec({"hostPath": str(data)}, {"hostPath": str(root / name)}, source, epochs=epochs)
        spec["training"]["earlyStopping"] = {"enabled": False}
        custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, transferjob(name, spec))

    def all_done() -> bool:
        phases = [
            (custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, n).get("status") or {}).get(
                "phase"
            )
            for n in names
        ]
        if "Failed" in phases:
            raise RuntimeError(f"a lag job failed: {phases}")
        return all(p == "Succeeded" for p in phases)

    wait_for(all_done, timeout=600, interval=1.0, what="the lag jobs")
    stop.set()
    lags: list[float] = []
    for name in names:
        pods = core.list_namespaced_pod(ns, label_selector=f"transferjob.io/job-name={name}").items
        for pod in pods:
            text = kubectl(
                cluster.kubeconfig, "logs", "--timestamps", "-n", ns, pod.metadata.name, "-c", "trainer"
            ).stdout
            for line in text.splitlines():
                stamp, _, payload = line.partition(" ")
                if '"event":"epoch"' not in payload:
                    continue
                epoch = json.loads(payload)["metrics"]["epoch"]
                if (name, epoch) in status_seen:
                    lags.append(status_seen[(name, epoch)] - _parse_stamp(stamp))
    return {
        "jobs": jobs_count,
        "epochs": epochs,
        "samples": len(lags),
        "lag_p50_s": percentile(lags, 50),
        "lag_p99_s": percentile(lags, 99),
        "lag_max_s": max(lags),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500, help="TransferJobs in the burst (and direct Jobs)")
    parser.add_argument("--lag-jobs", type=int, default=2, help="training jobs for the status lag")
    parser.add_argument("--lag-epochs", type=int, default=15, help="epochs of each lag job")
    parser.add_argument("--out", type=Path, default=None, help="write the results here as JSON")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="tj-bench-"))
    cluster_dir = root / "cluster"
    digits, model = make_digits(root / "digits")
    data, source = pod_data(digits, model), POD_BASE  # the trainer's UID reads them in its pod
    hand_to_trainer(root)  # and writes its outputs below it
    cluster = RealCluster(cluster_dir).start()
    results: Json = {"count": args.count, "threads": THREADS, "cpus": os.cpu_count()}
    operator: Operator | None = None
    try:
        api = cluster.api
        install(api)
        kubeconfig = service_account_kubeconfig(api, cluster.kubeconfig, root / "operator.kubeconfig")
        results["ceiling"] = bench_ceiling(api, data, source, root, args.count)
        print(f"ceiling (TransferJob creates, no operator): {results['ceiling']}", flush=True)
        operator = Operator(kubeconfig, root / "operator.log", cluster.trainer_image)
        time.sleep(8)  # imports and the first watches; no TransferJob exists yet
        results["rss_idle_mib"] = rss_mib(operator.proc.pid)
        results["cpu_cores_idle"] = busy_share(operator.proc.pid, 3.0)

        results["direct"] = bench_direct(api, data, source, root, args.count)
        print(f"direct: {results['direct']}", flush=True)
        results["lag"] = bench_lag(cluster, data, source, root, args.lag_jobs, args.lag_epochs)
        print(f"lag: {results['lag']}", flush=True)
        results["single"] = bench_single(api, data, source, root)
        print(f"single: {results['single']}", flush=True)

        core: Any = client.CoreV1Api(api)
        ns = new_namespace(core, "bench-burst")
        cpu_before = cpu_seconds(operator.proc.pid)
        results["burst"] = bench_burst(api, ns, data, source, root, args.count, 0)
        results["burst"]["operator_cpu_cores"] = (cpu_seconds(operator.proc.pid) - cpu_before) / results[
            "burst"
        ]["seconds_until_all_statuses"]
        print(f"burst: {results['burst']}", flush=True)
        results["rss_500_mib"] = rss_mib(operator.proc.pid)
        cpu_before = cpu_seconds(operator.proc.pid)
        results["burst2"] = bench_burst(api, ns, data, source, root, args.count, args.count)
        results["burst2"]["operator_cpu_cores"] = (cpu_seconds(operator.proc.pid) - cpu_before) / results[
            "burst2"
        ]["seconds_until_all_statuses"]
        print(f"burst2: {results['burst2']}", flush=True)
        time.sleep(5)  # the echoes of the last status writes
        results["rss_1000_mib"] = rss_mib(operator.proc.pid)
        # Steady state with 1000 unfinished (suspended) TransferJobs: nothing changes; how much CPU
        # does supervising them cost (timers, resync)?
        results["cpu_cores_1000_steady"] = busy_share(operator.proc.pid, 10.0)
        results["transferjobs_present"] = 2 * args.count
    finally:
        if operator is not None:
            results["operator_log"] = str(operator.log)
            operator.stop()
        cluster.stop()

    direct, burst, lag = results["direct"], results["burst"], results["lag"]
    ratio = burst["jobs_per_s"] / direct["jobs_per_s"]
    results["burst_vs_direct"] = ratio
    rows = [
        ("direct Jobs/s (the limit)", f"{direct['jobs_per_s']:.1f}", ""),
        ("TransferJob creates/s, no operator", f"{results['ceiling']['transferjobs_per_s']:.1f}", ""),
        ("TransferJob burst -> Jobs/s", f"{burst['jobs_per_s']:.1f}", f">= {0.5 * direct['jobs_per_s']:.1f}"),
        ("  ratio to direct", f"{100 * ratio:.0f} %", ">= 50 %"),
        ("  time until all have Jobs", f"{burst['seconds_until_all_jobs']:.1f} s", ""),
        ("  time until all say Suspended", f"{burst['seconds_until_all_statuses']:.1f} s", ""),
        ("  operator CPU, burst and its status writes", f"{burst['operator_cpu_cores']:.2f} cores", ""),
        ("apply -> Job p50, burst", f"{burst['latency_p50_ms']:.0f} ms", "< 100 ms"),
        ("apply -> Job p99, burst", f"{burst['latency_p99_ms']:.0f} ms", ""),
        (
            "  one TransferJob POST p50/p99 in the burst",
            f"{burst['post_p50_ms']:.0f}/{burst['post_p99_ms']:.0f} ms",
            "",
        ),
        (
            "  one Job POST p50/p99 in the direct run",
            f"{direct['post_p50_ms']:.0f}/{direct['post_p99_ms']:.0f} ms",
            "",
        ),
        (
            "apply -> Job p50/p99, one at a time",
            f"{results['single']['latency_p50_ms']:.0f}/{results['single']['latency_p99_ms']:.0f} ms",
            "",
        ),
        (
            "2nd burst (500 present) p50/p99",
            f"{results['burst2']['latency_p50_ms']:.0f}/{results['burst2']['latency_p99_ms']:.0f} ms",
            "",
        ),
        ("progress line -> .status p50", f"{lag['lag_p50_s']:.2f} s", "< 2 s"),
        ("progress line -> .status p99", f"{lag['lag_p99_s']:.2f} s", ""),
        ("operator RSS idle", f"{results['rss_idle_mib']:.0f} MiB", ""),
        ("operator RSS, 500 TransferJobs", f"{results['rss_500_mib']:.0f} MiB", ""),
        ("operator RSS, 1000 TransferJobs", f"{results['rss_1000_mib']:.0f} MiB", "< 150 MiB"),
        ("operator CPU, 1000 idle TransferJobs", f"{results['cpu_cores_1000_steady']:.2f} cores", ""),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"\n{'measure'.ljust(width)}  {'value':>14}  target")
    for name, value, target in rows:
        print(f"{name.ljust(width)}  {value:>14}  {target}")
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
