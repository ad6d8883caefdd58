"""The contract every backend fulfils, so that `TransferJobClient` is one facade over all of them.

A backend stores TransferJobs and runs them; it knows nothing about progress bars, waiting rules or
fine-tuning chains, which the client builds once on top of `stream` (a feed of object snapshots). That
keeps the cluster and the laptop behaving the same: `wait` on a local job is the same code as `wait`
on a cluster job.
"""

from __future__ import annotations

import abc
import builtins
import datetime as dt
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transferjob.bases import is_model_path
from transferjob.errors import BackendError, OutputUnreadableError
from transferjob.models import Mode, TransferJob
from transferjob.sweeps import TransferSweep, TransferSweepStatus

#: Characters Kubernetes uses for `generateName` suffixes (no vowels, no look-alikes).
_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


@dataclass(frozen=True)
class JobEvent:
    """A Kubernetes Event about a TransferJob (or, for local jobs, what the local runner recorded)."""

    type: str
    reason: str
    message: str
    time: dt.datetime | None = None
    count: int = 1


class Backend(abc.ABC):
    """Storage and execution of TransferJobs. Every name is in the backend's one namespace."""

    #: Where names live: the Kubernetes namespace, or "local".
    namespace: str

    @abc.abstractmethod
    def create(self, job: TransferJob) -> TransferJob:
        """Store and start the job; `metadata.name` or `metadata.generateName` is set."""

    @abc.abstractmethod
    def get(self, name: str) -> TransferJob:
        """The job as stored now; raises `JobNotFoundError`."""

    @abc.abstractmethod
    def list(self, label_selector: str | None = None) -> builtins.list[TransferJob]:
        """All jobs whose labels match the selector, oldest first."""

    @abc.abstractmethod
    def stream(self, name: str, timeout: float | None) -> Iterator[TransferJob]:
        """The job now, then each time it changes, until `timeout` seconds passed (then it returns).

        Raises `JobNotFoundError` when the job does not exist or is deleted meanwhile. Consumers stop
        iterating when they have seen what they wanted; there is no end of stream for a finished job.
        """

    @abc.abstractmethod
    def logs(self, name: str, follow: bool, tail: int | None) -> Iterator[str]:
        """The trainer's output lines (without newline); with `follow`, until the job has finished."""

    @abc.abstractmethod
    def events(self, name: str) -> builtins.list[JobEvent]:
        """What happened to the job, oldest first."""

    @abc.abstractmethod
    def delete(self, name: str) -> None:
        """Stop the job and forget it; raises `JobNotFoundError`."""

    @abc.abstractmethod
    def fine_tune_source(self, job: TransferJob) -> dict[str, str]:
        """The `spec.model` fields that make a FineTuning job start from `job`'s exported model.

        The cluster names the job (`fromJob`: the operator waits for it and mounts its output); a local
        run points at the exported file (`fromModel`), which exists only once `job` has succeeded.
        """

    #: Whether something else (the operator) runs the backend's sweeps; if not, `TransferJobClient`
    #: runs them in the calling process, through `update_sweep_status`.
    runs_sweeps: bool = True

    @abc.abstractmethod
    def create_sweep(self, sweep: TransferSweep) -> TransferSweep:
        """Store the sweep (`metadata.name` set); raises `SpecError`, or `SweepExistsError`."""

    @abc.abstractmethod
    def get_sweep(self, name: str) -> TransferSweep:
        """The sweep as stored now, with its status; raises `SweepNotFoundError`."""

    @abc.abstractmethod
    def delete_sweep(self, name: str) -> None:
        """Delete the sweep and its trials; raises `SweepNotFoundError`."""

    def update_sweep_status(self, name: str, status: TransferSweepStatus) -> None:
        """Store a sweep's status: only for a backend whose sweeps its client runs (`runs_sweeps`)."""
        raise BackendError("the sweep controller writes the status of this backend's sweeps")

    def claim_folder(self, claim_name: str) -> Path:
        """The folder of this machine that holds a PersistentVolumeClaim's files, for `tj report` to
        read a job's output: only a backend with a cluster can look a claim up, and only a volume that
        is a folder on a node (hostPath, local) has one."""
        raise OutputUnreadableError(
            f"PersistentVolumeClaim {claim_name!r} exists only in a cluster: use the kubernetes backend"
        )

    def create_inference_service(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Create a KServe InferenceService (`serving.inference_service`); returns it as created.

        Only a backend with a cluster can: the others say so.
        """
        raise BackendError(
            "creating an InferenceService needs the kubernetes backend; print the manifest (without "
            "--apply) and apply it with kubectl"
        )


def default_generate_name(job: TransferJob) -> str:
    """A readable `generateName` prefix for a job submitted without a name: `mobilenetv2-fe-`."""
    base = "transferjob" if is_model_path(job.spec.model.base) else job.spec.model.base.lower()
    mode = "ft" if job.spec.mode is Mode.FINE_TUNING else "fe"
    return f"{re.sub(r'[^a-z0-9-]', '', base)[:40] or 'transferjob'}-{mode}-"


def generate_name(prefix: str) -> str:
    """`prefix` plus 5 random characters, as the API server completes `generateName`."""
    return prefix[:58] + "".join(secrets.choice(_SUFFIX_ALPHABET) for _ in range(5))


_REQUIREMENT = re.compile(
    r"^\s*(?P<neg>!)?\s*(?P<key>[A-Za-z0-9][-A-Za-z0-9_./]*)\s*"
    r"(?:(?P<op>==|=|!=)\s*(?P<value>[-A-Za-z0-9_.]*)"
    r"|\s(?P<setop>in|notin)\s*\((?P<values>[^)]*)\))?\s*$"
)


def matches_selector(labels: dict[str, str], selector: str | None) -> bool:
    """Whether `labels` satisfy a Kubernetes label selector (`a=b,c!=d,e,!f,g in (x,y)`).

    The local backend has no API server to evaluate selectors, so it applies the same grammar here;
    a selector it cannot parse is a `ValueError`, as the API server would reject it too.
    """
    if not selector or not selector.strip():
        return True
    matches = []
    for requirement in _split_requirements(selector):
        match = _REQUIREMENT.match(requirement)
        if match is None or (match["neg"] and (match["op"] or match["setop"])):
            raise ValueError(f"invalid label selector requirement {requirement.strip()!r}")
        matches.append(match)
    return all(_satisfied(labels, match) for match in matches)


def _satisfied(labels: dict[str, str], match: re.Match[str]) -> bool:
    key = match["key"]
    if match["op"] in ("=", "=="):
        return labels.get(key) == match["value"]
    if match["op"] == "!=":
        return labels.get(key) != match["value"]
    if match["setop"]:
        values = {v.strip() for v in match["values"].split(",") if v.strip()}
        return (labels.get(key) in values) == (match["setop"] == "in")
    return (key in labels) != bool(match["neg"])


def _split_requirements(selector: str) -> list[str]:
    """Split on commas that are not inside `in (...)` value lists."""
    parts, depth, current = [], 0, ""
    for char in selector:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [p for p in parts if p.strip()]
