"""`tj-operator` / `python -m transferjob_operator`: run the operator in or out of a cluster.

Out of cluster it uses a kubeconfig (`--kubeconfig`, else `$KUBECONFIG`, else ~/.kube/config); in a pod
it uses the pod's ServiceAccount. Both the operator's own client and kopf's watches use the same
credentials, so what works from a laptop works in the Deployment under manifests/operator/.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import random
import sys
import threading
import time

import kopf
from kubernetes import client, config

from transferjob.constants import DEFAULT_TRAINER_IMAGE
from transferjob_operator import handlers, metrics
from transferjob_operator.upstream import DEFAULT_UPSTREAM_TIMEOUT


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="tj-operator", description="The TransferJob operator: TransferJobs in, training Jobs out."
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        metavar="NS",
        help="serve TransferJobs in this namespace (repeatable; globs like 'team-*' work)",
    )
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="serve every namespace (default)")
    parser.add_argument(
        "--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, in-cluster, ~/.kube/config)"
    )
    parser.add_argument("--context", help="kubeconfig context to use")
    parser.add_argument(
        "--liveness", metavar="URL", help="serve kopf's liveness probe, e.g. http://0.0.0.0:8080/healthz"
    )
    parser.add_argument(
        "--peering",
        metavar="NAME",
        help="coordinate with other operator replicas through this KopfPeering (ClusterKopfPeering with "
        "--all-namespaces); only the replica with the highest priority acts (default: standalone)",
    )
    parser.add_argument(
        "--priority",
        type=int,
        help="peering priority (default: higher for replicas started earlier, so a new replica does not "
        "take over from a running one)",
    )
    parser.add_argument(
        "--peering-lifetime",
        type=int,
        default=15,
        metavar="SECONDS",
        help="a replica silent this long is taken for dead and another one takes over (default: %(default)s)",
    )
    parser.add_argument(
        "--metrics-port", type=int, metavar="PORT", help="serve Prometheus metrics at /metrics (default: off)"
    )
    parser.add_argument(
        "--metrics-address",
        default="127.0.0.1",
        metavar="ADDRESS",
        help="address for --metrics-port; 0.0.0.0 in a pod (default: %(default)s)",
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=1.0,
        help="seconds between status updates of one TransferJob (default: %(default)s)",
    )
    parser.add_argument(
        "--trainer-image",
        default=os.environ.get("TJ_TRAINER_IMAGE") or DEFAULT_TRAINER_IMAGE,
        metavar="IMAGE",
        help="the trainer image of TransferJobs whose spec.resources.image is unset "
        "(default: $TJ_TRAINER_IMAGE, else %(default)s)",
    )
    parser.add_argument(
        "--from-job-timeout",
        type=float,
        default=DEFAULT_UPSTREAM_TIMEOUT,
        help="seconds a fromJob waits for a TransferJob that does not exist (default: %(default)s)",
    )
    parser.add_argument(
        "--controllers",
        default=",".join(handlers.CONTROLLERS),
        metavar="LIST",
        help="comma-separated controllers to run: transferjobs (TransferJob -> training Job), "
        "transfersweeps (TransferSweep -> trial TransferJobs); e.g. one Deployment per controller, or "
        "a sweep controller tested against a control plane without a node (default: %(default)s)",
    )
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true", help="more logs")
    verbosity.add_argument("--debug", action="store_true", help="kopf's debug logs too")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    return parser.parse_args(argv)


def api_client(kubeconfig: str | None, context: str | None) -> client.ApiClient:
    """The client for the operator's own calls; kopf's login takes its credentials from it too."""
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config()
    else:
        config.load_kube_config(config_file=kubeconfig, context=context)
    configuration = client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = 64  # one streaming log per running job, plus the writes
    return client.ApiClient(configuration)


def ensure_peering(api: client.ApiClient, name: str, namespaces: list[str]) -> None:
    """Create the peering object ``--peering`` names, if missing (kopf waits, paused, until it exists).

    Not in manifests/: a custom resource cannot be applied in the same ``kubectl apply -k`` as its CRD
    ("ensure CRDs are installed first"), so the operator makes its own. Cluster-wide operators share a
    ClusterKopfPeering; namespaced ones a KopfPeering in each namespace named exactly (a glob names none).
    """
    custom = client.CustomObjectsApi(api)
    body = {"apiVersion": "kopf.dev/v1", "metadata": {"name": name}}
    try:
        if not namespaces:
            custom.create_cluster_custom_object(
                "kopf.dev", "v1", "clusterkopfpeerings", {**body, "kind": "ClusterKopfPeering"}
            )
        for namespace in namespaces:
            if not any(ch in namespace for ch in "*?[!"):
                custom.create_namespaced_custom_object(
                    "kopf.dev", "v1", namespace, "kopfpeerings", {**body, "kind": "KopfPeering"}
                )
    except client.ApiException as error:
        if error.status != 409:  # 409: another replica (or an admin) made it first
            raise


def seniority_priority(started: float, jitter: int) -> int:
    """A peering priority that is higher the earlier the replica started, ties broken by `jitter`.

    kopf pauses every replica when two live ones share the highest priority, so priorities must differ;
    preferring the senior replica means a restarted pod joins as a stand-by instead of taking the work
    over from the replica that is doing it. Whole seconds since 2020 stay far below 2**31, so the
    result fits a JSON number exactly.
    """
    seconds = int(started) - 1_577_836_800
    return (2**31 - seconds) * 1_000_000 + jitter % 1_000_000


M_ARENA_MAX = -8  # glibc's mallopt parameter
TRIM_SECONDS = 10.0


def tame_malloc() -> None:
    """Keep glibc's heap small: 2 malloc arenas, and free heap pages handed back to the OS regularly.

    By default glibc gives each thread that allocates (the API client threads, the log followers)
    its own arena, up to 8 per core, and keeps freed memory in them: after a burst of TransferJobs the
    operator's RSS stays at its peak. No-op where there is no glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_ARENA_MAX, 2)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return

    def trimmer() -> None:
        while True:
            time.sleep(TRIM_SECONDS)
            trim(0)

    threading.Thread(target=trimmer, name="malloc-trim", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    controllers = frozenset(c.strip() for c in args.controllers.split(",") if c.strip())
    unknown = sorted(controllers - set(handlers.CONTROLLERS))
    if unknown or not controllers:
        print(
            f"tj-operator: --controllers takes some of {', '.join(handlers.CONTROLLERS)}, "
            f"not {args.controllers!r}",
            file=sys.stderr,
        )
        return 2
    tame_malloc()
    kopf.configure(verbose=args.verbose, debug=args.debug, quiet=args.quiet)
    if not (args.verbose or args.debug):
        logging.getLogger("kubernetes").setLevel(logging.WARNING)
        logging.getLogger("urllib3").setLevel(logging.WARNING)
    handlers.configure(
        handlers.OperatorConfig(
            api=api_client(args.kubeconfig, args.context),
            interval=args.interval,
            upstream_timeout=args.from_job_timeout,
            peering_lifetime=args.peering_lifetime,
            trainer_image=args.trainer_image,
            controllers=controllers,
        )
    )
    if args.metrics_port is not None:
        metrics.serve(args.metrics_address, args.metrics_port)
    if args.peering is not None:
        assert handlers.CONFIG.api is not None
        ensure_peering(handlers.CONFIG.api, args.peering, args.namespace)
    priority = args.priority
    if priority is None and args.peering is not None:
        priority = seniority_priority(time.time(), random.randrange(1_000_000))
    kopf.run(
        standalone=args.peering is None,
        peering_name=args.peering,
        priority=priority,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=args.liveness,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
