"""TEST INFRASTRUCTURE ONLY: a process-based stand-in for the kubelet.

Why it exists: the machines that run this project's tests have no container runtime, yet cluster tests
must exercise the real scheduler, Job controller, garbage collector and API server. This agent
registers Nodes (with cpu, memory and ``nvidia.com/gpu`` capacity), keeps them Ready (Lease renewals
plus the Ready condition), and runs every container of a pod bound to one of its nodes as a *local
process* in the project's Python environment. It reports pod status the way a kubelet does, serves
container logs to the API server over HTTPS (so ``kubectl logs -f`` works) and finalises deleted pods.

It is not a kubelet and never will be. What differs, on purpose:

* No image is pulled or run. ``image`` is recorded in the container status and the agent log only.
  ``command`` (or, when empty, ``args``) is executed directly; ``python``/``python3`` resolve to the
  interpreter running the agent (the project's venv), other names are looked up on the container PATH,
  which starts with the venv's ``bin`` directory.
* Processes cannot mount. Each volume is materialised as a host directory (or file) and every
  ``mountPath`` is *rewritten*: occurrences of the mount path as a path prefix in command, args and
  env values are replaced with the real location, ``workingDir`` likewise, and the full map is
  passed as JSON in ``TJ_PATH_MAP`` (``{"<mountPath>": "<real path>", ...}``) for programs that
  build paths at run time. ``terminationMessagePath`` is mapped the same way to a per-container file.
* One network namespace: podIP = hostIP = 127.0.0.1; ``KUBERNETES_SERVICE_HOST``/``PORT`` point at the
  API server's loopback address, never at the service ClusterIP.
* Optionally (on by default) it is also a tiny dynamic provisioner: a default StorageClass
  ``tj-local`` whose claims get hostPath PersistentVolumes under ``<root>/pvs``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import functools
import http.server
import json
import logging
import math
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException
from kubernetes.utils import parse_quantity

from transferjob.types import Json
from transferjob_testing.cluster.controlplane import PRCTL

log = logging.getLogger("tj-node-agent")

PROVISIONER = "transferjob.io/test-local-path"
# The generated client would default a dict patch body to JSON Patch; say which patch we send.
SMP = "application/strategic-merge-patch+json"
AGENT_LABEL = "node.transferjob.io/agent"
LOOPBACK = "127.0.0.1"
DEFAULT_TERMINATION_PATH = "/dev/termination-log"
MAX_TERMINATION_MESSAGE = 4096
PYTHON_NAMES = re.compile(r"^(?:.*/)?python(?:3(?:\.\d+)?)?$")


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def rfc3339(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def micro(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --------------------------------------------------------------------------------------- config
@dataclass
class AgentConfig:
    """Everything the agent needs; the CLI flags map onto these fields one to one."""

    kubeconfig: Path
    root: Path
    node_names: list[str]
    cpu: str = "8"
    memory: str = "32Gi"
    gpus: int = 0
    max_pods: int = 110
    tls_cert: Path | None = None
    tls_key: Path | None = None
    client_ca: Path | None = None
    port: int = 0
    restart_backoff: float = 2.0
    max_restart_backoff: float = 60.0
    provision: bool = True
    storage_class: str = "tj-local"
    delete_nodes_on_exit: bool = False
    python: str = sys.executable
    lease_seconds: int = 40


# ------------------------------------------------------------------------------- path rewriting
class PathMap:
    """Maps container paths (mountPath, terminationMessagePath) to real host paths.

    Rewriting is prefix-based and respects path boundaries: with ``/data -> /tmp/x``,
    ``--dir=/data/train`` becomes ``--dir=/tmp/x/train`` while ``/database`` and ``/y/data`` are left
    alone. Longer container paths win (``/data/out`` before ``/data``).
    """

    def __init__(self, mapping: dict[str, str]) -> None:
        self.mapping = {k.rstrip("/") or "/": v for k, v in mapping.items()}
        keys = sorted(self.mapping, key=len, reverse=True)
        self._re = (
            re.compile(r"(?<![\w./-])(" + "|".join(re.escape(k) for k in keys) + r")(?=/|$|[^\w.-])")
            if keys
            else None
        )

    def rewrite(self, value: str) -> str:
        if self._re is None:
            return value
        return self._re.sub(lambda m: self.mapping[m.group(1)], value)

    def to_json(self) -> str:
        return json.dumps(self.mapping, sort_keys=True)


_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand_vars(value: str, env: dict[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: defined names are substituted, ``$$`` escapes a ``$``."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env.get(name, m.group(0))

    return _VAR_REF.sub(sub, value)


# ---------------------------------------------------------------------------------- containers
class MountError(RuntimeError):
    """A volume could not be prepared yet (missing ConfigMap, unbound claim...): retried."""


@dataclass
class ContainerRun:
    """One container of a pod: its process, its logs and the status fields the API expects."""

    spec: Json
    init: bool
    home: Path
    restart_count: int = 0
    proc: subprocess.Popen[bytes] | None = None
    state: Json = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: Json = field(default_factory=dict)
    next_start: float = 0.0
    done: bool = False  # terminated for good (no restart will follow)
    readers: list[threading.Thread] = field(default_factory=list)
    log_lock: threading.Lock = field(default_factory=threading.Lock)
    term_file: Path | None = None

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    def log_path(self, restart: int | None = None) -> Path:
        n = self.restart_count if restart is None else restart
        return self.home / "logs" / f"{n}.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def status(self) -> Json:
        st: Json = {
            "name": self.name,
            "image": self.spec.get("image") or "none",
            "imageID": "",
            "ready": "running" in self.state,
            "started": "running" in self.state,
            "restartCount": self.restart_count,
            "state": self.state,
        }
        if self.proc is not None:
            st["containerID"] = f"process://{self.proc.pid}"
        if self.last_state:
            st["lastState"] = self.last_state
        return st


def _die_with_agent() -> None:
    """``preexec_fn``: SIGKILL the container process if the agent dies without cleaning up."""
    if PRCTL is not None:
        PRCTL(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _pump(stream: Any, name: str, run: ContainerRun, path: Path) -> None:
    """Copy one output stream into the CRI-style log file: ``<RFC3339Nano> <stream> <F|P> <line>``."""
    with path.open("ab") as out:
        for raw in iter(stream.readline, b""):
            tag = b"F" if raw.endswith(b"\n") else b"P"
            line = raw[:-1] if tag == b"F" else raw
            stamp = micro(now()).encode()
            with run.log_lock:
                out.write(stamp + b" " + name.encode() + b" " + tag + b" " + line + b"\n")
                out.flush()
    stream.close()


# ----------------------------------------------------------------------------------- pod worker
class PodWorker(threading.Thread):
    """Drives one pod from admission to its terminal phase and, on deletion, to its removal."""

    def __init__(self, agent: NodeAgent, pod: Json) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"pod-{meta['namespace']}/{meta['name']}", daemon=True)
        self.agent = agent
        self.pod = pod
        self.uid: str = meta["uid"]
        self.ns: str = meta["namespace"]
        self.pod_name: str = meta["name"]
        self.dir = agent.cfg.root / "pods" / self.uid
        self.wake = threading.Event()
        self.deleting = False
        self.force_killed = False
        self.finished = threading.Event()  # pod reached a terminal phase
        self.gone = threading.Event()  # pod removed from the API
        spec = pod["spec"]
        self.restart_policy: str = spec.get("restartPolicy", "Always")
        self.inits = [
            ContainerRun(c, True, self.dir / "containers" / c["name"])
            for c in spec.get("initContainers") or []
        ]
        self.mains = [ContainerRun(c, False, self.dir / "containers" / c["name"]) for c in spec["containers"]]
        self.start_time = now()
        self.phase = "Pending"
        self.reason: str | None = None
        self.message: str | None = None
        self.volumes: dict[str, Path] = {}
        self.volumes_ready = False
        self._last_status: str = ""
        self._transitions: dict[str, tuple[str, str]] = {}

    # -- events from the watch
    def update(self, pod: Json) -> None:
        self.pod = pod
        if pod["metadata"].get("deletionTimestamp") and not self.deleting:
            self.deleting = True
            self.wake.set()

    def force_kill(self) -> None:
        """The pod object is gone (force deletion): kill at once, nothing left to report."""
        self.force_killed = True
        self.deleting = True
        self.gone.set()
        self.wake.set()

    @property
    def containers(self) -> list[ContainerRun]:
        return self.inits + self.mains

    def find(self, name: str) -> ContainerRun | None:
        return next((c for c in self.containers if c.name == name), None)

    # -- main loop
    def run(self) -> None:
        try:
            self._loop()
        except Exception:
            log.exception("pod worker %s/%s crashed", self.ns, self.pod_name)
            self._kill_all(0)
        finally:
            self.finished.set()

    def _loop(self) -> None:
        images = ", ".join(f"{c.name}={c.spec.get('image')}" for c in self.containers)
        log.info(
            "pod %s/%s on %s: images recorded, not pulled: %s",
            self.ns,
            self.pod_name,
            self.pod["spec"].get("nodeName"),
            images,
        )
        deadline = self.pod["spec"].get("activeDeadlineSeconds")
        while True:
            if self.deleting:
                self._terminate_for_deletion()
                return
            if not self.volumes_ready:
                try:
                    self._prepare_volumes()
                    self.volumes_ready = True
                except MountError as exc:
                    if str(exc) != self.message:  # the kubelet repeats it; once per distinct failure here
                        self.agent.warn(self.pod, "FailedMount", str(exc))
                    self.message = str(exc)
                    self._report()
                    self.wake.wait(1.0)
                    self.wake.clear()
                    continue
                self.message = None
            if deadline is not None and (now() - self.start_time).total_seconds() > float(deadline):
                self._kill_all(0)
                self.phase, self.reason = "Failed", "DeadlineExceeded"
                self.message = f"Pod was active on the node longer than the specified deadline ({deadline}s)"
                self._mark_unstarted_terminated()
                self._report()
                self._after_terminal()
                return
            self._step()
            self._report()
            if self.phase in ("Succeeded", "Failed"):
                self._after_terminal()
                return
            self.wake.wait(0.2)
            self.wake.clear()

    def _after_terminal(self) -> None:
        """A finished pod stays until someone deletes it; then it is removed with grace 0."""
        self.finished.set()
        while not self.deleting:
            self.wake.wait(1.0)
            self.wake.clear()
            self._report()  # a no-op once the final status is stored; retried while the API is away
        if not self.force_killed:
            self.agent.delete_pod_now(self.ns, self.pod_name, self.uid)

    def _step(self) -> None:
        t = time.monotonic()
        # init containers: strictly one after the other
        for c in self.inits:
            if c.done:
                continue
            self._poll(c)
            if c.running or c.done:
                if not c.done:
                    return
                term = c.state.get("terminated", {})
                if term.get("exitCode", 1) != 0:
                    self.phase = "Failed"
                    self._mark_unstarted_terminated()
                    return
                continue
            if t >= c.next_start:
                self._start(c)
            return
        self.phase = "Running" if any(c.running for c in self.mains) else self.phase
        for c in self.mains:
            if c.done:
                continue
            self._poll(c)
            if not c.running and not c.done and t >= c.next_start:
                self._start(c)
        if all(c.done for c in self.mains):
            codes = [c.state["terminated"]["exitCode"] for c in self.mains]
            self.phase = "Succeeded" if all(code == 0 for code in codes) else "Failed"
        elif any(c.running or c.restart_count > 0 for c in self.mains):
            self.phase = "Running"

    def _mark_unstarted_terminated(self) -> None:
        for c in self.containers:
            if "waiting" in c.state:
                c.state = {"waiting": {"reason": "PodInitializing" if not c.init else "ContainerCreating"}}

    def _poll(self, c: ContainerRun) -> None:
        """Notice an exit, record the termination and decide about a restart."""
        if c.proc is None or c.proc.poll() is None or "terminated" in c.state:
            return
        for r in c.readers:
            r.join(timeout=5)
        self._record_exit(c)
        code = c.state["terminated"]["exitCode"]
        policy = "OnFailure" if c.init and self.restart_policy == "Always" else self.restart_policy
        restart = policy == "Always" or (policy == "OnFailure" and code != 0)
        if restart and not self.deleting:
            backoff = min(
                self.agent.cfg.restart_backoff * (2**c.restart_count), self.agent.cfg.max_restart_backoff
            )
            c.next_start = time.monotonic() + backoff
            c.last_state = c.state
            c.state = {
                "waiting": {
                    "reason": "CrashLoopBackOff" if code != 0 else "Completed",
                    "message": f"back-off {backoff:.0f}s restarting container {c.name}",
                }
            }
            c.restart_count += 1
            c.proc = None
        else:
            c.done = True

    def _record_exit(self, c: ContainerRun) -> None:
        assert c.proc is not None
        rc = c.proc.returncode
        code = 128 - rc if rc < 0 else rc
        started = c.state.get("running", {}).get("startedAt", rfc3339(now()))
        term: Json = {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            "startedAt": started,
            "finishedAt": rfc3339(now()),
            "containerID": f"process://{c.proc.pid}",
        }
        if rc < 0:
            term["signal"] = -rc
        msg = self._termination_message(c, code)
        if msg:
            term["message"] = msg
        c.state = {"terminated": term}
        log.info("container %s/%s/%s exited with %s", self.ns, self.pod_name, c.name, code)

    def _termination_message(self, c: ContainerRun, code: int) -> str:
        text = ""
        if c.term_file is not None and c.term_file.is_file():
            text = c.term_file.read_bytes()[:MAX_TERMINATION_MESSAGE].decode(errors="replace")
        policy = c.spec.get("terminationMessagePolicy", "File")
        if not text and policy == "FallbackToLogsOnError" and code != 0:
            lines = list(read_log_lines(c.log_path()))[-80:]
            text = "".join(content for _, content in lines)[-2048:]
        return text

    # -- starting a container
    def _start(self, c: ContainerRun) -> None:
        try:
            argv, env, cwd = self._process_spec(c)
        except MountError as exc:
            c.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(exc)}}
            c.next_start = time.monotonic() + 1.0
            return
        log_path = c.log_path()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.touch()
        try:
            proc = subprocess.Popen(
                argv,
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,  # own process group: kill the whole tree
                preexec_fn=_die_with_agent,
            )
        except OSError as exc:
            c.state = {
                "terminated": {
                    "exitCode": 128,
                    "reason": "StartError",
                    "message": f"failed to start {argv[0]!r}: {exc}",
                    "startedAt": rfc3339(now()),
                    "finishedAt": rfc3339(now()),
                }
            }
            c.proc = None
            policy = self.restart_policy
            if policy == "Always" or policy == "OnFailure":
                c.last_state = c.state
                c.restart_count += 1
                c.next_start = time.monotonic() + self.agent.cfg.max_restart_backoff
                c.state = {"waiting": {"reason": "RunContainerError", "message": str(exc)}}
            else:
                c.done = True
            return
        c.proc = proc
        c.state = {"running": {"startedAt": rfc3339(now())}}
        c.readers = [
            threading.Thread(target=_pump, args=(proc.stdout, "stdout", c, log_path), daemon=True),
            threading.Thread(target=_pump, args=(proc.stderr, "stderr", c, log_path), daemon=True),
        ]
        for r in c.readers:
            r.start()
        log.info("started %s/%s/%s pid %s: %s", self.ns, self.pod_name, c.name, proc.pid, argv)

    def _process_spec(self, c: ContainerRun) -> tuple[list[str], dict[str, str], str]:
        spec = c.spec
        c.home.mkdir(parents=True, exist_ok=True)
        mapping: dict[str, str] = {}
        for m in spec.get("volumeMounts") or []:
            base = self.volumes.get(m["name"])
            if base is None:
                raise MountError(f"volume {m['name']!r} not found")
            real = base
            sub = m.get("subPath") or ""
            if m.get("subPathExpr"):
                sub = expand_vars(m["subPathExpr"], self.agent.pod_field_env(self.pod))
            if sub:
                real = base / sub
                if not real.exists():
                    real.mkdir(parents=True, exist_ok=True)
            mapping[m["mountPath"]] = str(real)
        term_path = spec.get("terminationMessagePath") or DEFAULT_TERMINATION_PATH
        c.term_file = c.home / "termination-log"
        c.term_file.write_bytes(b"")
        mapping[term_path] = str(c.term_file)
        paths = PathMap(mapping)

        env = self.agent.base_env(self.pod, c)
        env["TJ_PATH_MAP"] = paths.to_json()
        for src in spec.get("envFrom") or []:
            prefix = src.get("prefix", "")
            if "configMapRef" in src:
                ref = src["configMapRef"]
                data = self.agent.get_configmap(self.ns, ref["name"], bool(ref.get("optional")))
            else:
                ref = src["secretRef"]
                data = self.agent.get_secret(self.ns, ref["name"], bool(ref.get("optional")))
            for k, v in (data or {}).items():
                env[prefix + k] = v
        for e in spec.get("env") or []:
            if "valueFrom" in e:
                value = self.agent.env_value_from(self.pod, spec, e["valueFrom"])
                if value is None:
                    continue
            else:
                value = expand_vars(e.get("value", ""), env)
            env[e["name"]] = paths.rewrite(value)

        command = [expand_vars(a, env) for a in spec.get("command") or []]
        args = [expand_vars(a, env) for a in spec.get("args") or []]
        argv = [paths.rewrite(a) for a in (command + args if command else args)]
        if not argv:
            raise MountError(
                f"container {c.name} has no command or args; images are not run by the test node agent"
            )
        argv[0] = self.agent.resolve_executable(argv[0], env)
        work = spec.get("workingDir")
        if work:
            real_work = paths.rewrite(work)
            if real_work == work and not Path(work).is_dir():
                real_work = str(c.home / "workdir")  # an image path that does not exist on the host
            Path(real_work).mkdir(parents=True, exist_ok=True)
            cwd = real_work
        else:
            cwd = str(c.home)
        return argv, env, cwd

    # -- volumes
    def _prepare_volumes(self) -> None:
        vroot = self.dir / "volumes"
        vroot.mkdir(parents=True, exist_ok=True)
        for vol in self.pod["spec"].get("volumes") or []:
            if vol["name"] in self.volumes:
                continue
            self.volumes[vol["name"]] = self.agent.materialise_volume(self.pod, vol, vroot / vol["name"])

    # -- stopping
    def _grace(self) -> float:
        meta_grace = self.pod["metadata"].get("deletionGracePeriodSeconds")
        if meta_grace is None:
            meta_grace = self.pod["spec"].get("terminationGracePeriodSeconds", 30)
        return float(meta_grace)

    def _kill_all(self, grace: float) -> None:
        running = [c for c in self.containers if c.running]
        for c in running:
            assert c.proc is not None
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(c.proc.pid, signal.SIGTERM if grace > 0 else signal.SIGKILL)
        end = time.monotonic() + grace
        while any(c.running for c in running) and time.monotonic() < end:
            time.sleep(0.05)
        for c in running:
            if c.running:
                assert c.proc is not None
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(c.proc.pid, signal.SIGKILL)
        for c in running:
            assert c.proc is not None
            c.proc.wait()
            for r in c.readers:
                r.join(timeout=5)
            self._record_exit(c)
            c.done = True

    def _terminate_for_deletion(self) -> None:
        grace = 0.0 if self.force_killed else self._grace()
        self._kill_all(grace)
        if self.force_killed:
            return
        for c in self.containers:
            c.done = True
        if self.phase not in ("Succeeded", "Failed"):
            codes = [c.state.get("terminated", {}).get("exitCode", 137) for c in self.mains]
            self.phase = "Succeeded" if codes and all(code == 0 for code in codes) else "Failed"
            for c in self.containers:
                if "waiting" in c.state:
                    c.state = {
                        "terminated": {
                            "exitCode": 137,
                            "reason": "ContainerStatusUnknown",
                            "message": "The container could not be located when the pod was deleted.",
                            "finishedAt": rfc3339(now()),
                            "startedAt": rfc3339(now()),
                        }
                    }
        self._report()
        self.finished.set()
        self.agent.delete_pod_now(self.ns, self.pod_name, self.uid)

    # -- status
    def _cond(self, ctype: str, ok: bool, reason: str | None = None) -> Json:
        status = "True" if ok else "False"
        prev = self._transitions.get(ctype)
        if prev is None or prev[0] != status:
            self._transitions[ctype] = (status, rfc3339(now()))
        cond: Json = {
            "type": ctype,
            "status": status,
            "lastTransitionTime": self._transitions[ctype][1],
            "lastProbeTime": None,
        }
        if reason and not ok:
            cond["reason"] = reason
        return cond

    def _report(self) -> None:
        if self.force_killed:
            return
        inits_done = all(c.done and c.state.get("terminated", {}).get("exitCode") == 0 for c in self.inits)
        all_ready = all("running" in c.state for c in self.mains)
        terminal = self.phase in ("Succeeded", "Failed")
        reason = "PodCompleted" if terminal else "ContainersNotReady"
        conditions = [
            self._cond("PodReadyToStartContainers", self.volumes_ready),
            self._cond("Initialized", inits_done or terminal, "ContainersNotInitialized"),
            self._cond("ContainersReady", all_ready and not terminal, reason),
            self._cond("Ready", all_ready and not terminal, reason),
        ]
        status: Json = {
            "phase": self.phase,
            "hostIP": LOOPBACK,
            "hostIPs": [{"ip": LOOPBACK}],
            "podIP": LOOPBACK,
            "podIPs": [{"ip": LOOPBACK}],
            "startTime": rfc3339(self.start_time),
            "conditions": conditions,
            "containerStatuses": [c.status() for c in self.mains],
        }
        if self.inits:
            status["initContainerStatuses"] = [c.status() for c in self.inits]
        if self.reason:
            status["reason"] = self.reason
        if self.message:
            status["message"] = self.message
        if not self.volumes_ready and self.message:
            for cs in status["containerStatuses"]:
                cs["state"] = {"waiting": {"reason": "ContainerCreating", "message": self.message}}
        encoded = json.dumps(status, sort_keys=True)
        if encoded == self._last_status:
            return
        try:
            self.agent.core.patch_namespaced_pod_status(
                self.pod_name, self.ns, {"status": status}, _content_type=SMP
            )
            self._last_status = encoded
        except ApiException as exc:
            if exc.status == 404:
                self.force_kill()
            else:
                log.warning(
                    "status update of %s/%s failed: %s %s", self.ns, self.pod_name, exc.status, exc.body
                )
        except Exception as exc:  # API server unreachable (restarting): the next _report() retries
            log.warning("status update of %s/%s failed: %s", self.ns, self.pod_name, exc)


# ------------------------------------------------------------------------------------ log files
def read_log_lines(path: Path) -> Iterator[tuple[str, str]]:
    """(timestamp, content-with-newline-if-complete) for every record of a CRI-style log file."""
    if not path.exists():
        return
    with path.open("rb") as f:
        for raw in f:
            yield _parse_record(raw)


def _parse_record(raw: bytes) -> tuple[str, str]:
    parts = raw.rstrip(b"\n").split(b" ", 3)
    if len(parts) < 4:
        parts += [b""] * (4 - len(parts))
    stamp, _stream, tag, content = parts
    text = content.decode(errors="replace") + ("\n" if tag == b"F" else "")
    return stamp.decode(), text


class LogHandler(http.server.BaseHTTPRequestHandler):
    """``GET /containerLogs/{namespace}/{pod}/{container}``: what the API server asks a kubelet for."""

    protocol_version = "HTTP/1.1"
    agent: NodeAgent  # set on the subclass built by NodeAgent

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("log server: " + format, *args)

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        parts = [urllib.parse.unquote(p) for p in url.path.strip("/").split("/")]
        if parts == ["healthz"]:
            self._plain(200, "ok")
            return
        if len(parts) != 4 or parts[0] != "containerLogs":
            self._plain(404, f"not found: {url.path}")
            return
        _, ns, pod, cname = parts
        q = urllib.parse.parse_qs(url.query)

        def flag(name: str) -> bool:
            return q.get(name, ["false"])[0].lower() in ("true", "1")

        worker = self.agent.worker_for(ns, pod)
        c = worker.find(cname) if worker else None
        if worker is None or c is None:
            self._plain(404, f'container "{cname}" in pod "{pod}" not found on this node')
            return
        restart = c.restart_count
        if flag("previous"):
            if restart == 0:
                self._plain(400, f'previous terminated container "{cname}" in pod "{pod}" not found')
                return
            restart -= 1
        path = c.log_path(restart)
        if not path.exists():
            reason = c.state.get("waiting", {}).get("reason", "ContainerCreating")
            self._plain(400, f'container "{cname}" in pod "{pod}" is waiting to start: {reason}')
            return
        tail = int(q["tailLines"][0]) if "tailLines" in q else None
        limit = int(q["limitBytes"][0]) if "limitBytes" in q else None
        since: str | None = None
        if "sinceSeconds" in q:
            since = micro(now() - dt.timedelta(seconds=int(q["sinceSeconds"][0])))
        elif "sinceTime" in q:
            since = micro(dt.datetime.fromisoformat(q["sinceTime"][0].replace("Z", "+00:00")))
        follow = flag("follow") and not flag("previous")
        timestamps = flag("timestamps")
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        sent = 0
        try:
            for stamp, text in self._records(path, tail, follow, c, restart, worker):
                if since and stamp < since:
                    continue
                data = ((stamp + " ") if timestamps else "") + text
                chunk = data.encode()
                if limit is not None:
                    chunk = chunk[: max(0, limit - sent)]
                if chunk:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.flush()
                    sent += len(chunk)
                if limit is not None and sent >= limit:
                    break
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass
        self.close_connection = True

    def _records(
        self, path: Path, tail: int | None, follow: bool, c: ContainerRun, restart: int, worker: PodWorker
    ) -> Iterator[tuple[str, str]]:
        with path.open("rb") as f:
            if tail is not None:
                lines = f.readlines()
                for raw in lines[-tail:] if tail > 0 else []:
                    yield _parse_record(raw)
            buf = b""
            while True:
                raw = f.readline()
                if raw:
                    buf += raw
                    if buf.endswith(b"\n"):
                        yield _parse_record(buf)
                        buf = b""
                    continue
                if not follow:
                    return
                finished = (
                    c.restart_count != restart or c.done or "terminated" in c.state or worker.gone.is_set()
                )
                if finished:
                    # one last read: the readers may have written after our previous readline
                    rest = f.read()
                    for line in (buf + rest).splitlines(keepends=True):
                        yield _parse_record(line)
                    return
                time.sleep(0.1)

    def _plain(self, code: int, text: str) -> None:
        body = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


# ----------------------------------------------------------------------------------------- agent
class NodeAgent:
    """Registers nodes, watches their pods, runs them as processes and serves their logs."""

    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.api = config.new_client_from_config(config_file=str(cfg.kubeconfig))
        # Typed as Any on purpose: the agent sends raw dict bodies and reads raw JSON
        # (_preload_content=False); the generated signatures only know the pydantic models.
        self.core: Any = client.CoreV1Api(self.api)
        host = urllib.parse.urlsplit(self.api.configuration.host)
        self.api_host = host.hostname or LOOPBACK
        self.api_port = host.port or 443
        self.workers: dict[str, PodWorker] = {}
        self.by_name: dict[tuple[str, str], PodWorker] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.server: http.server.ThreadingHTTPServer | None = None
        self.port = 0
        self.boot_id = str(uuid.uuid4())
        self.venv_bin = str(Path(cfg.python).parent)

    # -- lifecycle
    def start(self) -> None:
        self.cfg.root.mkdir(parents=True, exist_ok=True)
        self._start_log_server()
        for name in self.cfg.node_names:
            self._register(name)
        self._spawn(self._heartbeat_loop, "heartbeat")
        for name in self.cfg.node_names:
            self._spawn(functools.partial(self._watch_pods, name), f"watch-{name}")
        if self.cfg.provision:
            self._ensure_storage_class()
            self._spawn(self._provision_loop, "provisioner")
        log.info("node agent ready: nodes %s, kubelet port %s", self.cfg.node_names, self.port)

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self.threads.append(t)

    def stop(self) -> None:
        """Kill every pod process (SIGKILL after a short grace) and stop serving; nodes go NotReady."""
        self.stopping.set()
        with self.lock:
            workers = list(self.workers.values())
        for w in workers:
            w._kill_all(2.0)
        if self.server is not None:
            self.server.shutdown()
        if self.cfg.delete_nodes_on_exit:
            for name in self.cfg.node_names:
                with contextlib.suppress(ApiException):
                    self.core.delete_node(name)

    # -- kubelet HTTPS endpoint
    def _start_log_server(self) -> None:
        handler = type("BoundLogHandler", (LogHandler,), {"agent": self})
        server = http.server.ThreadingHTTPServer((LOOPBACK, self.cfg.port), handler)
        server.daemon_threads = True
        if self.cfg.tls_cert and self.cfg.tls_key:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(self.cfg.tls_cert), str(self.cfg.tls_key))
            if self.cfg.client_ca:
                ctx.load_verify_locations(str(self.cfg.client_ca))
                ctx.verify_mode = ssl.CERT_REQUIRED  # only the API server's kubelet-client cert gets in
            server.socket = ctx.wrap_socket(server.socket, server_side=True)
        else:
            log.warning("no --tls-cert: the kubelet endpoint speaks plain HTTP; `kubectl logs` will not work")
        self.server = server
        self.port = int(server.server_address[1])
        self._spawn(server.serve_forever, "log-server")

    # -- nodes
    def _node_status(self, name: str) -> Json:
        capacity = {
            "cpu": self.cfg.cpu,
            "memory": self.cfg.memory,
            "pods": str(self.cfg.max_pods),
            "ephemeral-storage": "100Gi",
            "nvidia.com/gpu": str(self.cfg.gpus),
        }
        t = rfc3339(now())

        def cond(ctype: str, status: str, reason: str, message: str) -> Json:
            return {
                "type": ctype,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": t,
                "lastTransitionTime": self._started_at,
            }

        return {
            "capacity": capacity,
            "allocatable": dict(capacity),
            "conditions": [
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "test node agent"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "test node agent"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID", "test node agent"),
                cond("Ready", "True", "KubeletReady", "transferjob test node agent is posting ready status"),
            ],
            "addresses": [{"type": "InternalIP", "address": LOOPBACK}, {"type": "Hostname", "address": name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.port}},
            "nodeInfo": {
                "machineID": name,
                "systemUUID": name,
                "bootID": self.boot_id,
                "kernelVersion": os.uname().release,
                "osImage": "transferjob test node agent (processes)",
                "containerRuntimeVersion": "process://tj-node-agent",
                "kubeletVersion": "v0.0.0-tj-node-agent",
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }

    _started_at = rfc3339(now())

    def _register(self, name: str) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": {
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    AGENT_LABEL: "process",
                },
                "annotations": {"transferjob.io/test-infrastructure": "processes, not containers"},
            },
        }
        try:
            self.core.create_node(body)
        except ApiException as exc:
            if exc.status != 409:
                raise
        self.core.patch_node_status(name, {"status": self._node_status(name)}, _content_type=SMP)
        self._renew_lease(name)

    def _renew_lease(self, name: str) -> None:
        coord: Any = client.CoordinationV1Api(self.api)
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name, "namespace": "kube-node-lease"},
            "spec": {
                "holderIdentity": name,
                "leaseDurationSeconds": self.cfg.lease_seconds,
                "renewTime": micro(now()),
            },
        }
        try:
            coord.patch_namespaced_lease(name, "kube-node-lease", {"spec": body["spec"]}, _content_type=SMP)
        except ApiException as exc:
            if exc.status != 404:
                raise
            coord.create_namespaced_lease("kube-node-lease", body)

    def _heartbeat_loop(self) -> None:
        ticks = 0
        while not self.stopping.wait(5.0):
            ticks += 1
            for name in self.cfg.node_names:
                try:
                    self._renew_lease(name)
                    if ticks % 6 == 0:
                        self.core.patch_node_status(
                            name, {"status": self._node_status(name)}, _content_type=SMP
                        )
                except Exception as exc:
                    log.warning("heartbeat for %s failed: %s", name, exc)

    # -- pods
    def _watch_pods(self, node: str) -> None:
        selector = f"spec.nodeName={node}"
        core: Any = client.CoreV1Api(config.new_client_from_config(config_file=str(self.cfg.kubeconfig)))
        while not self.stopping.is_set():
            try:
                resp = core.list_pod_for_all_namespaces(field_selector=selector, _preload_content=False)
                listing = json.loads(resp.data)
                seen = set()
                for pod in listing["items"]:
                    seen.add(pod["metadata"]["uid"])
                    self._on_pod(pod)
                with self.lock:
                    vanished = [
                        w
                        for uid, w in self.workers.items()
                        if uid not in seen and w.pod["spec"].get("nodeName") == node
                    ]
                for w in vanished:
                    self._on_deleted(w.pod)
                rv = listing["metadata"]["resourceVersion"]
                for event in watch.Watch().stream(
                    core.list_pod_for_all_namespaces,
                    field_selector=selector,
                    resource_version=rv,
                    timeout_seconds=120,
                    _request_timeout=150,
                ):
                    if self.stopping.is_set():
                        return
                    pod = event["raw_object"]
                    if event["type"] == "DELETED":
                        self._on_deleted(pod)
                    elif event["type"] in ("ADDED", "MODIFIED"):
                        self._on_pod(pod)
            except Exception as exc:
                if not self.stopping.is_set():
                    log.info("pod watch for %s restarting: %s", node, exc)
                    time.sleep(0.5)

    def _on_pod(self, pod: Json) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        with self.lock:
            worker = self.workers.get(uid)
            if worker is not None:
                worker.update(pod)
                return
            phase = (pod.get("status") or {}).get("phase")
            if phase in ("Succeeded", "Failed"):
                if meta.get("deletionTimestamp"):  # finished before we (re)started: just remove it
                    threading.Thread(
                        target=self.delete_pod_now, args=(meta["namespace"], meta["name"], uid), daemon=True
                    ).start()
                return
            worker = PodWorker(self, pod)
            self.workers[uid] = worker
            self.by_name[(meta["namespace"], meta["name"])] = worker
        worker.update(pod)
        worker.start()

    def _on_deleted(self, pod: Json) -> None:
        meta = pod["metadata"]
        with self.lock:
            worker = self.workers.pop(meta["uid"], None)
            key = (meta["namespace"], meta["name"])
            if worker is not None and self.by_name.get(key) is worker:
                del self.by_name[key]
        if worker is not None:
            worker.force_kill()
            threading.Thread(target=self._cleanup, args=(worker,), daemon=True).start()

    def _cleanup(self, worker: PodWorker) -> None:
        worker.join(timeout=60)
        shutil.rmtree(worker.dir, ignore_errors=True)

    def warn(self, pod: Json, reason: str, message: str) -> None:
        """A Warning event on the pod, as the kubelet records one (best effort, like the kubelet's)."""
        meta = pod["metadata"]
        node = pod["spec"].get("nodeName", "")
        stamp = rfc3339(now())
        event = {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": meta["uid"],
            },
            "reason": reason,
            "message": message,
            "type": "Warning",
            "source": {"component": "kubelet", "host": node},
            "reportingComponent": "kubelet",
            "reportingInstance": node,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            self.core.create_namespaced_event(meta["namespace"], event)
        except Exception as exc:  # an event lost is a message lost, never a pod stuck
            log.warning("event %s on %s/%s not recorded: %s", reason, meta["namespace"], meta["name"], exc)

    def worker_for(self, ns: str, name: str) -> PodWorker | None:
        with self.lock:
            return self.by_name.get((ns, name))

    def delete_pod_now(self, ns: str, name: str, uid: str) -> None:
        """What a kubelet does once the containers are gone: delete with grace 0, guarded by uid."""
        try:
            self.core.delete_namespaced_pod(
                name, ns, body={"gracePeriodSeconds": 0, "preconditions": {"uid": uid}}
            )
        except ApiException as exc:
            if exc.status not in (404, 409):
                log.warning("deleting %s/%s failed: %s", ns, name, exc.status)

    # -- env
    def base_env(self, pod: Json, c: ContainerRun) -> dict[str, str]:
        """What the image and the kubelet would provide before the pod's own env."""
        env = {
            "PATH": f"{self.venv_bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(c.home / "home"),
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",  # like the usual python image ENV: log lines reach `kubectl logs -f` now
            "HOSTNAME": pod["metadata"]["name"],
            "KUBERNETES_SERVICE_HOST": self.api_host,
            "KUBERNETES_SERVICE_PORT": str(self.api_port),
            "KUBERNETES_SERVICE_PORT_HTTPS": str(self.api_port),
            "KUBERNETES_PORT": f"tcp://{self.api_host}:{self.api_port}",
            "TJ_TEST_NODE_AGENT": "1",
        }
        Path(env["HOME"]).mkdir(parents=True, exist_ok=True)
        return env

    def resolve_executable(self, cmd: str, env: dict[str, str]) -> str:
        if PYTHON_NAMES.match(cmd):
            return self.cfg.python
        if "/" in cmd:
            return cmd
        return shutil.which(cmd, path=env.get("PATH")) or cmd

    def pod_field_env(self, pod: Json) -> dict[str, str]:
        meta, spec = pod["metadata"], pod["spec"]
        return {
            "POD_NAME": meta["name"],
            "POD_NAMESPACE": meta["namespace"],
            "NODE_NAME": spec.get("nodeName", ""),
        }

    def field_ref(self, pod: Json, path: str) -> str:
        meta, spec = pod["metadata"], pod["spec"]
        m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
        if m:
            return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
        values = {
            "metadata.name": meta["name"],
            "metadata.namespace": meta["namespace"],
            "metadata.uid": meta["uid"],
            "spec.nodeName": spec.get("nodeName", ""),
            "spec.serviceAccountName": spec.get("serviceAccountName", ""),
            "status.hostIP": LOOPBACK,
            "status.hostIPs": LOOPBACK,
            "status.podIP": LOOPBACK,
            "status.podIPs": LOOPBACK,
        }
        if path == "metadata.labels":
            return "\n".join(f'{k}="{v}"' for k, v in sorted((meta.get("labels") or {}).items()))
        if path == "metadata.annotations":
            return "\n".join(f'{k}="{v}"' for k, v in sorted((meta.get("annotations") or {}).items()))
        if path not in values:
            raise MountError(f"unsupported fieldRef {path}")
        return values[path]

    def resource_ref(self, container: Json, ref: Json) -> str:
        resource = ref["resource"]
        kind, _, name = resource.partition(".")
        res = (container.get("resources") or {}).get(kind) or {}
        raw = res.get(name)
        if raw is None and kind == "requests":
            raw = ((container.get("resources") or {}).get("limits") or {}).get(name)
        if raw is None:
            raw = {"cpu": self.cfg.cpu, "memory": self.cfg.memory, "ephemeral-storage": "100Gi"}.get(
                name, "0"
            )
        divisor = parse_quantity(ref.get("divisor") or "1")
        return str(math.ceil(parse_quantity(raw) / divisor))

    def env_value_from(self, pod: Json, container: Json, src: Json) -> str | None:
        ns = pod["metadata"]["namespace"]
        if "fieldRef" in src:
            return self.field_ref(pod, src["fieldRef"]["fieldPath"])
        if "resourceFieldRef" in src:
            ref = src["resourceFieldRef"]
            target = container
            if ref.get("containerName"):
                target = next(c for c in pod["spec"]["containers"] if c["name"] == ref["containerName"])
            return self.resource_ref(target, ref)
        if "configMapKeyRef" in src:
            ref = src["configMapKeyRef"]
            data = self.get_configmap(ns, ref["name"], bool(ref.get("optional")))
        elif "secretKeyRef" in src:
            ref = src["secretKeyRef"]
            data = self.get_secret(ns, ref["name"], bool(ref.get("optional")))
        else:
            raise MountError(f"unsupported valueFrom {sorted(src)}")
        if data is None or ref["key"] not in data:
            if ref.get("optional"):
                return None
            raise MountError(f"couldn't find key {ref['key']} in {ref['name']}")
        return data[ref["key"]]

    def _read_object(self, kind: str, ns: str, name: str, optional: bool) -> dict[str, Any] | None:
        """A ConfigMap or Secret as JSON; None when it is missing and optional (the kubelet's rule)."""
        core = self.core
        read = core.read_namespaced_config_map if kind == "configmap" else core.read_namespaced_secret
        try:
            return json.loads(read(name, ns, _preload_content=False).data)
        except ApiException as exc:
            if exc.status != 404:
                raise
            if optional:
                return None
            raise MountError(f'{kind} "{name}" not found') from exc

    def get_configmap(self, ns: str, name: str, optional: bool) -> dict[str, str] | None:
        data = self._configmap_bytes(ns, name, optional)
        return None if data is None else {k: v.decode(errors="replace") for k, v in data.items()}

    def _configmap_bytes(self, ns: str, name: str, optional: bool) -> dict[str, bytes] | None:
        cm = self._read_object("configmap", ns, name, optional)
        if cm is None:
            return None
        out = {k: v.encode() for k, v in (cm.get("data") or {}).items()}
        out.update({k: base64.b64decode(v) for k, v in (cm.get("binaryData") or {}).items()})
        return out

    def _secret_bytes(self, ns: str, name: str, optional: bool) -> dict[str, bytes] | None:
        sec = self._read_object("secret", ns, name, optional)
        return None if sec is None else {k: base64.b64decode(v) for k, v in (sec.get("data") or {}).items()}

    def get_secret(self, ns: str, name: str, optional: bool) -> dict[str, str] | None:
        data = self._secret_bytes(ns, name, optional)
        return None if data is None else {k: v.decode(errors="replace") for k, v in data.items()}

    # -- volumes
    def materialise_volume(self, pod: Json, vol: Json, target: Path) -> Path:
        """Turn one pod volume into a host path; see the module docstring for the mapping rules."""
        ns = pod["metadata"]["namespace"]
        if "hostPath" in vol:
            hp = vol["hostPath"]
            path = Path(hp["path"])
            kind = hp.get("type", "")
            # The kubelet's type check, and its words (pkg/volume/hostpath): nothing is created for
            # `Directory` or `File`, the pod stays in ContainerCreating with a FailedMount event.
            checks = {"Directory": (Path.is_dir, "a directory"), "File": (Path.is_file, "a file")}
            if kind == "FileOrCreate":
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch(exist_ok=True)
            elif kind in ("", "DirectoryOrCreate"):
                path.mkdir(parents=True, exist_ok=True)
            elif kind in checks and not checks[kind][0](path):
                raise MountError(
                    f'MountVolume.SetUp failed for volume "{vol["name"]}" : '
                    f"hostPath type check failed: {path} is not {checks[kind][1]}"
                )
            elif not path.exists():
                raise MountError(f"hostPath {path} does not exist (type {kind})")
            return path
        if "persistentVolumeClaim" in vol:
            return self._claim_path(ns, vol["persistentVolumeClaim"]["claimName"])
        target.mkdir(parents=True, exist_ok=True)
        if "emptyDir" in vol:
            return target
        if "configMap" in vol:
            src = vol["configMap"]
            cm_data = self._configmap_bytes(ns, src["name"], bool(src.get("optional")))
            _write_items(target, cm_data or {}, src.get("items"), src.get("defaultMode", 0o644))
            return target
        if "secret" in vol:
            src = vol["secret"]
            sec_data = self._secret_bytes(ns, src["secretName"], bool(src.get("optional")))
            _write_items(target, sec_data or {}, src.get("items"), src.get("defaultMode", 0o644))
            return target
        if "downwardAPI" in vol:
            self._downward(pod, vol["downwardAPI"].get("items") or [], target)
            return target
        if "projected" in vol:
            for source in vol["projected"].get("sources") or []:
                if "configMap" in source:
                    src = source["configMap"]
                    data = self._configmap_bytes(ns, src["name"], bool(src.get("optional")))
                    _write_items(target, data or {}, src.get("items"), 0o644)
                elif "secret" in source:
                    src = source["secret"]
                    data = self._secret_bytes(ns, src["name"], bool(src.get("optional")))
                    _write_items(target, data or {}, src.get("items"), 0o644)
                elif "downwardAPI" in source:
                    self._downward(pod, source["downwardAPI"].get("items") or [], target)
                elif "serviceAccountToken" in source:
                    token = self._token(pod, source["serviceAccountToken"])
                    _write_items(
                        target,
                        {"token": token.encode()},
                        [{"key": "token", "path": source["serviceAccountToken"]["path"]}],
                        0o600,
                    )
            return target
        log.warning(
            "volume %s of %s/%s: unsupported source %s, using an empty directory",
            vol["name"],
            ns,
            pod["metadata"]["name"],
            sorted(set(vol) - {"name"}),
        )
        return target

    def _downward(self, pod: Json, items: list[Json], target: Path) -> None:
        files: dict[str, bytes] = {}
        for item in items:
            if "fieldRef" in item:
                files[item["path"]] = self.field_ref(pod, item["fieldRef"]["fieldPath"]).encode()
            elif "resourceFieldRef" in item:
                ref = item["resourceFieldRef"]
                container = next(
                    c for c in pod["spec"]["containers"] if c["name"] == ref.get("containerName")
                )
                files[item["path"]] = self.resource_ref(container, ref).encode()
        _write_items(target, files, None, 0o644)

    def _token(self, pod: Json, src: Json) -> str:
        meta = pod["metadata"]
        spec: Json = {
            "expirationSeconds": int(src.get("expirationSeconds", 3607)),
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]},
        }
        if src.get("audience"):
            spec["audiences"] = [src["audience"]]
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
        sa = pod["spec"].get("serviceAccountName") or "default"
        resp = self.core.create_namespaced_service_account_token(
            sa, meta["namespace"], body, _preload_content=False
        )
        return str(json.loads(resp.data)["status"]["token"])

    def _claim_path(self, ns: str, claim: str) -> Path:
        try:
            pvc = json.loads(
                self.core.read_namespaced_persistent_volume_claim(claim, ns, _preload_content=False).data
            )
        except ApiException as exc:
            if exc.status == 404:
                raise MountError(f'persistentvolumeclaim "{claim}" not found') from exc
            raise
        volume = pvc["spec"].get("volumeName")
        if volume and pvc.get("status", {}).get("phase") == "Bound":
            pv = json.loads(self.core.read_persistent_volume(volume, _preload_content=False).data)
            for key in ("hostPath", "local"):
                if key in pv["spec"]:
                    path = Path(pv["spec"][key]["path"])
                    path.mkdir(parents=True, exist_ok=True)
                    return path
        # Not bound to a host-path volume: a stable per-claim directory, shared by all pods of the claim.
        path = self.cfg.root / "claims" / ns / claim
        path.mkdir(parents=True, exist_ok=True)
        return path

    # -- local-path provisioning
    def _ensure_storage_class(self) -> None:
        storage: Any = client.StorageV1Api(self.api)
        body = {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {
                "name": self.cfg.storage_class,
                "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
            },
            "provisioner": PROVISIONER,
            "reclaimPolicy": "Retain",
            "volumeBindingMode": "Immediate",
        }
        try:
            storage.create_storage_class(body)
        except ApiException as exc:
            if exc.status != 409:
                raise

    def _provision_loop(self) -> None:
        while not self.stopping.wait(0.5):
            try:
                self._provision_once()
            except Exception as exc:
                log.warning("provisioner: %s", exc)

    def _provision_once(self) -> None:
        claims = json.loads(
            self.core.list_persistent_volume_claim_for_all_namespaces(_preload_content=False).data
        )["items"]
        for pvc in claims:
            spec = pvc["spec"]
            if spec.get("storageClassName") != self.cfg.storage_class or spec.get("volumeName"):
                continue
            meta = pvc["metadata"]
            name = f"pvc-{meta['uid']}"
            path = self.cfg.root / "pvs" / name
            path.mkdir(parents=True, exist_ok=True)
            size = ((spec.get("resources") or {}).get("requests") or {}).get("storage", "1Gi")
            pv = {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": name, "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER}},
                "spec": {
                    "capacity": {"storage": size},
                    "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": self.cfg.storage_class,
                    "volumeMode": spec.get("volumeMode", "Filesystem"),
                    "claimRef": {
                        "apiVersion": "v1",
                        "kind": "PersistentVolumeClaim",
                        "namespace": meta["namespace"],
                        "name": meta["name"],
                        "uid": meta["uid"],
                    },
                    "hostPath": {"path": str(path), "type": "DirectoryOrCreate"},
                },
            }
            try:
                self.core.create_persistent_volume(pv)
                log.info("provisioned %s for %s/%s at %s", name, meta["namespace"], meta["name"], path)
            except ApiException as exc:
                if exc.status != 409:
                    raise


def _write_items(target: Path, data: dict[str, bytes], items: list[Json] | None, mode: int) -> None:
    selected = (
        [(i["key"], i["path"], i.get("mode", mode)) for i in items] if items else [(k, k, mode) for k in data]
    )
    for key, rel, file_mode in selected:
        if key not in data:
            continue
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data[key])
        path.chmod(file_mode)


# ------------------------------------------------------------------------------------------ CLI
def parse_args(argv: list[str] | None = None) -> AgentConfig:
    p = argparse.ArgumentParser(
        prog="python -m transferjob_testing.cluster.node_agent", description=__doc__.split("\n")[0]
    )
    p.add_argument("--kubeconfig", type=Path, required=True)
    p.add_argument("--root", type=Path, required=True, help="pod directories, logs and volumes live here")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--node-prefix", default="tj-node")
    p.add_argument("--cpu", default="8")
    p.add_argument("--memory", default="32Gi")
    p.add_argument("--gpus", type=int, default=0, help="nvidia.com/gpu capacity per node (fake devices)")
    p.add_argument("--max-pods", type=int, default=110)
    p.add_argument("--tls-cert", type=Path, help="serving certificate for the kubelet endpoint")
    p.add_argument("--tls-key", type=Path)
    p.add_argument("--client-ca", type=Path, help="CA that signed the API server's kubelet client cert")
    p.add_argument("--port", type=int, default=0, help="kubelet endpoint port (0: a free one)")
    p.add_argument("--restart-backoff", type=float, default=2.0)
    p.add_argument("--no-provisioner", action="store_true")
    p.add_argument("--delete-nodes-on-exit", action="store_true")
    a = p.parse_args(argv)
    names = [f"{a.node_prefix}-{i}" for i in range(a.nodes)]
    return AgentConfig(
        kubeconfig=a.kubeconfig,
        root=a.root.resolve(),
        node_names=names,
        cpu=a.cpu,
        memory=a.memory,
        gpus=a.gpus,
        max_pods=a.max_pods,
        tls_cert=a.tls_cert,
        tls_key=a.tls_key,
        client_ca=a.client_ca,
        port=a.port,
        restart_backoff=a.restart_backoff,
        provision=not a.no_provisioner,
        delete_nodes_on_exit=a.delete_nodes_on_exit,
    )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(threadName)s %(message)s")
    cfg = parse_args(argv)
    agent = NodeAgent(cfg)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    agent.start()
    print(f"tj-node-agent ready nodes={','.join(cfg.node_names)} port={agent.port}", flush=True)
    done.wait()
    agent.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
