"""Which TransferJob owns an output location: its `owner.json`, written by the first job that uses it.

A retry of a job (a pod restart, an operator restart: the same uid) must resume from the checkpoints in
its output location, but another job pointed at that location would silently resume from, or overwrite,
a model that is not its own. So a job records itself in the location, and every run reads the record:

- no record: the location is free. The job writes its record (of two jobs claiming it at the same
  moment only one can: `fs.create_bytes`). A location that holds files but no record (written by a
  version before owner records, or by a trainer started by hand) belongs to nobody: the job takes it
  over with a warning in the log, and resumes from its checkpoint when the settings and data match.
- this job's uid: a retry, which resumes as always.
- another uid, or a record that cannot be read: `OutputInUseError` (permanent), unless
  `output.ownershipPolicy` is `Adopt`; then the record is rewritten in this job's name, the previous
  owner kept in it (`previousOwner`), with a warning in the log.

`check_owner` runs within a second of the start, before the data is copied or checked; `claim_output`
writes the record only once the data has passed its checks, so a job that fails on a bad spec or bad
data leaves no claim behind. A trainer started without a job identity (`--job-uid`) claims nothing: it
may use a free location, and an owned one only with `Adopt`. No TensorFlow here.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from transferjob.constants import API_VERSION, KIND
from transferjob.models import OwnershipPolicy
from transferjob_trainer import fs
from transferjob_trainer.errors import OutputInUseError
from transferjob_trainer.report import log

OWNER_FILE = "owner.json"


@dataclass(frozen=True)
class Owner:
    """A TransferJob that owns an output location, as its record says (or as the flags name this run's).

    `unreadable` says why a record could not be read: such a location belongs to an unknown job.
    """

    uid: str
    name: str = ""
    namespace: str | None = None
    claimed_at: str | None = None
    unreadable: str | None = None

    @classmethod
    def from_flags(cls, job: str | None, uid: str | None) -> Owner | None:
        """This run's identity from `--job [NAMESPACE/]NAME` and `--job-uid UID`; None without a uid."""
        if not uid:
            return None
        namespace, _, name = (job or "").rpartition("/")
        return cls(uid=uid, name=name, namespace=namespace or None)

    @classmethod
    def from_record(cls, data: Any) -> Owner:
        if not isinstance(data, dict) or not isinstance(data.get("uid"), str) or not data["uid"]:
            raise ValueError("no uid")
        return cls(
            uid=data["uid"],
            name=str(data.get("name") or ""),
            namespace=data.get("namespace"),
            claimed_at=data.get("claimedAt"),
        )

    def record(self, claimed_at: str, previous: Owner | None) -> dict[str, Any]:
        """The record this job writes: the TransferJob's identity, when, and whom it took over from."""
        record: dict[str, Any] = {"apiVersion": API_VERSION, "kind": KIND}
        if self.namespace:
            record["namespace"] = self.namespace
        record.update(name=self.name, uid=self.uid, claimedAt=claimed_at)
        if previous is not None:
            record["previousOwner"] = (
                {"unreadable": previous.unreadable}
                if previous.unreadable
                else {
                    k: v
                    for k, v in (
                        ("namespace", previous.namespace),
                        ("name", previous.name),
                        ("uid", previous.uid),
                        ("claimedAt", previous.claimed_at),
                    )
                    if v
                }
            )
        return record

    def __str__(self) -> str:
        if self.unreadable:
            return f"an unknown job (its {OWNER_FILE} cannot be read: {self.unreadable})"
        who = f"{self.namespace}/{self.name}" if self.namespace else self.name
        since = f", since {self.claimed_at}" if self.claimed_at else ""
        return f"TransferJob {who or '?'} (uid {self.uid}{since})"


def owner_path(output: str) -> str:
    return fs.join(output, OWNER_FILE)


def read_owner(output: str) -> Owner | None:
    """The owner the location's record names, None without a record."""
    path = owner_path(output)
    if not fs.exists(path):
        return None
    try:
        return Owner.from_record(json.loads(fs.read_text(path)))
    except (ValueError, UnicodeDecodeError) as error:  # JSONDecodeError is a ValueError
        return Owner(uid="", unreadable=str(error) or type(error).__name__)


def check_owner(output: str, job: Owner | None, policy: OwnershipPolicy) -> Owner | None:
    """The location's owner, after making sure this run may use it: `OutputInUseError` if another job
    owns it and the policy is not Adopt."""
    owner = read_owner(output)
    if owner is None or policy == "Adopt" or (job is not None and owner.uid == job.uid):
        return owner
    anonymous = "" if job is not None else " (and this trainer run names no job: it has no --job-uid)"
    raise OutputInUseError(output, f"{owner}{anonymous}")


def _holds_files(output: str) -> bool:
    return fs.isdir(output) and any(name != OWNER_FILE for name in fs.listdir(output))


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def claim_output(output: str, job: Owner | None, policy: OwnershipPolicy) -> None:
    """Record `job` as the location's owner (checked again: another job may have claimed it since)."""
    owner = check_owner(output, job, policy)
    if job is None:
        if owner is not None:
            log(f"warning: output.ownershipPolicy Adopt: using {output}, owned by {owner}; record kept")
        return
    if owner is not None and owner.uid == job.uid:
        return  # a retry of the owner: it resumes
    if owner is None:
        if _holds_files(output):
            log(
                f"warning: {output} holds files but no {OWNER_FILE} (written by an older version, or by "
                f"a trainer started by hand): it belongs to no job, and {job} takes it over"
            )
        if fs.create_bytes(owner_path(output), _encode(job.record(_now(), None))):
            log(f"output location {output} is owned by {job} now")
            return
        owner = check_owner(output, job, policy)  # claimed by another job since: fails unless Adopt
        if owner is not None and owner.uid == job.uid:
            return
    log(f"warning: output.ownershipPolicy Adopt: {output} was owned by {owner}; {job} takes it over")
    fs.write_bytes(owner_path(output), _encode(job.record(_now(), owner)))


def _encode(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, indent=1) + "\n").encode()
