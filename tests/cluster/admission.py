"""Specs as `tj` and `kubectl apply` see them, for the admission tests, the parity test and the corpus
(TransferJobs, and TransferSweeps).

The SDK's verdict, the API server's (a create as `kubectl apply` makes it), whether two messages name the
same field, and the corpus files with their merge-onto-a-good-spec convention (tests/corpus/README.md).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client

from transferjob import yamlio
from transferjob.constants import GROUP, KIND, PLURAL, SWEEP_KIND, SWEEP_PLURAL, VERSION
from transferjob.errors import SpecError
from transferjob.models import parse_spec
from transferjob.sweeps import parse_sweep_spec

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
#: A corpus change that removes the key instead of setting it.
DELETE = "<delete>"
#: A field as both sides write it: `spec.model.imageSize`, `spec.data.classNames[1]`.
FIELD = re.compile(r"spec(?:\.[A-Za-z0-9_]+|\[\d+\])+")

#: The good sweep every case of sweeps.yaml and sweep-updates.yaml starts from: the template is the good
#: TransferJob spec of admission.yaml (tests/cluster/test_corpus.py: BASE_SPEC).
SWEEP_SPEC: dict[str, Any] = {
    "template": {
        "data": {"source": {"pvc": {"claimName": "datasets", "subPath": "flowers"}}},
        "output": {"location": {"pvc": {"claimName": "models"}}},
    },
    "parameters": {"training.learningRate": {"logUniform": {"min": 1.0e-5, "max": 1.0e-2}}},
    "objective": {"metric": "valAccuracy"},
    "maxTrials": 6,
    "parallelTrials": 2,
}

#: spec -> the API server's error message, or None when it would admit the spec.
DryRun = Callable[[dict[str, Any]], "str | None"]


def create_transferjob(
    custom: client.CustomObjectsApi, namespace: str, name: str, spec: dict[str, Any], dry_run: bool = False
) -> str | None:
    """Create as `kubectl apply` does (strict field validation): the error message, or None."""
    return create_resource(custom, namespace, name, spec, KIND, PLURAL, dry_run)


def create_transfersweep(
    custom: client.CustomObjectsApi, namespace: str, name: str, spec: dict[str, Any], dry_run: bool = False
) -> str | None:
    """`create_transferjob` for a TransferSweep."""
    return create_resource(custom, namespace, name, spec, SWEEP_KIND, SWEEP_PLURAL, dry_run)


def create_resource(
    custom: client.CustomObjectsApi,
    namespace: str,
    name: str,
    spec: dict[str, Any],
    kind: str,
    plural: str,
    dry_run: bool = False,
) -> str | None:
    """Create a `kind` as `kubectl apply` does (strict field validation): the error message, or None."""
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": name}, "spec": spec}
    try:
        custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            plural,
            body,
            field_validation="Strict",
            **({"dry_run": "All"} if dry_run else {}),
        )
    except client.ApiException as error:
        # 422 for schema and CEL violations; 400 for unknown fields under strict field validation.
        assert error.status in (400, 422), error.body
        return str(json.loads(error.body)["message"])
    return None


def sdk_verdict(spec: dict[str, Any]) -> str | None:
    """The SDK's error for a spec (what `tj submit` prints), or None when it accepts it."""
    try:
        parse_spec(copy.deepcopy(spec))
    except SpecError as error:
        return str(error)
    return None


def sdk_sweep_verdict(spec: dict[str, Any]) -> str | None:
    """`sdk_verdict` for a TransferSweep spec."""
    try:
        parse_sweep_spec(copy.deepcopy(spec))
    except SpecError as error:
        return str(error)
    return None


def _fields(message: str) -> set[str]:
    """The fields a message names, without list indexes (the API server and pydantic count alike, but a
    union's error may stop at the list)."""
    return {re.sub(r"\[\d+\]", "", f) for f in FIELD.findall(message)}


def same_field(sdk: str, api: str) -> bool:
    """Whether both messages name one field, or one names a field inside the other's (`spec.mode` and
    the unknown `spec.mode.a` the API server's decoder reports for an object where a string goes)."""
    return any(
        a == b or a.startswith(f"{b}.") or b.startswith(f"{a}.") for a in _fields(sdk) for b in _fields(api)
    )


def load_corpus(name: str) -> list[dict[str, Any]]:
    """The cases of one corpus file."""
    cases = yamlio.load((CORPUS / name).read_text())
    assert isinstance(cases, list) and cases, name
    return cases


def merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`base` with `changes` merged in, recursively; a change of `<delete>` removes the key."""
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if value == DELETE:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out
