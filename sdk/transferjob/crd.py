"""Render the TransferJob and TransferSweep CustomResourceDefinitions from the pydantic models.

The CRDs are never edited by hand: `python -m transferjob.crd --write` regenerates
`manifests/crd/transferjob.io_transferjobs.yaml` (from `transferjob.models`) and
`manifests/crd/transferjob.io_transfersweeps.yaml` (from `transferjob.sweeps`), and a test fails when
a committed file differs.

Pydantic emits JSON Schema 2020-12; Kubernetes wants a *structural* OpenAPI v3 subset. The translation
inlines `$ref`s, drops titles, turns `Optional[X]` into `nullable`, `int | str` into
`x-kubernetes-int-or-string` with the `anyOf: [integer, string]` Kubernetes publishes for its own
IntOrString (the one `anyOf` a structural schema allows; tools that read the file see both types),
numeric `exclusiveMinimum: N` into `minimum: N, exclusiveMinimum: true`, removes
`additionalProperties: false` (forbidden in CRDs; the API server prunes unknown fields instead), and
gives nested objects whose fields all have defaults a `default: {}` so the API server fills them in.
A node that may hold any JSON value says so with `x-kubernetes-preserve-unknown-fields` and no type
(a sweep trial's parameter values: numbers, integers, names or switches).
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import yaml

from transferjob.constants import (
    CRD_NAME,
    GROUP,
    KIND,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    SWEEP_CRD_NAME,
    SWEEP_KIND,
    SWEEP_PLURAL,
    SWEEP_SHORT_NAMES,
    SWEEP_SINGULAR,
    VERSION,
)
from transferjob.models import TransferJobSpec, TransferJobStatus
from transferjob.sweeps import TransferSweep, TransferSweepSpec, TransferSweepStatus

CRD_DIR = Path("manifests/crd")
CRD_PATH = CRD_DIR / "transferjob.io_transferjobs.yaml"
SWEEP_CRD_PATH = CRD_DIR / "transferjob.io_transfersweeps.yaml"

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Mode", "type": "string", "jsonPath": ".spec.mode"},
    {"name": "Model", "type": "string", "jsonPath": ".spec.model.base"},
    {"name": "Epoch", "type": "integer", "jsonPath": ".status.epoch"},
    {"name": "Progress", "type": "number", "jsonPath": ".status.progress.percent"},
    {"name": "Step", "type": "string", "jsonPath": ".status.progress.step", "priority": 1},
    {
        "name": "Left-Seconds",
        "type": "integer",
        "jsonPath": ".status.progress.remainingSeconds",
        "priority": 1,
    },
    {"name": "Val-Acc", "type": "number", "jsonPath": ".status.metrics.valAccuracy"},
    {"name": "Test-Acc", "type": "number", "jsonPath": ".status.test.accuracy"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

SWEEP_PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Metric", "type": "string", "jsonPath": ".spec.objective.metric"},
    {"name": "Best", "type": "number", "jsonPath": ".status.bestTrial.objective"},
    {"name": "Done", "type": "integer", "jsonPath": ".status.finishedTrials"},
    {"name": "Trials", "type": "integer", "jsonPath": ".spec.maxTrials"},
    {"name": "Running", "type": "integer", "jsonPath": ".status.runningTrials", "priority": 1},
    {"name": "Algorithm", "type": "string", "jsonPath": ".spec.algorithm.name", "priority": 1},
    {"name": "Best-Trial", "type": "string", "jsonPath": ".status.bestTrial.name", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

ROOT_RULES = [
    {
        "rule": "self.metadata.name.size() <= 63",
        "message": "metadata.name must be at most 63 characters: it names the training Job and its pods",
    }
]


#: The only `anyOf` a structural schema allows, and only beside `x-kubernetes-int-or-string: true`.
INT_OR_STRING = [{"type": "integer"}, {"type": "string"}]


def _is_null(schema: dict[str, Any]) -> bool:
    return schema.get("type") == "null"


def to_structural(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Convert one pydantic JSON-schema node (and its children) into a structural CRD schema node."""
    node = copy.deepcopy(schema)
    if "$ref" in node:
        target = defs[node.pop("$ref").split("/")[-1]]
        merged = {**copy.deepcopy(target), **node}  # the property's own description wins
        return to_structural(merged, defs)

    nullable = False
    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if not _is_null(o)]
        nullable = len(options) != len(schema["anyOf"])
        types = {o.get("type") for o in options}
        if types == {"integer", "string"}:
            node["x-kubernetes-int-or-string"] = True
            node["anyOf"] = copy.deepcopy(INT_OR_STRING)
        elif len(options) == 1:
            inner = to_structural(options[0], defs)
            inner.update(node)  # the property's own keywords (description, default, x-kubernetes-*)
            node = inner
        else:
            raise ValueError(f"cannot express anyOf {options} structurally")
    if nullable:
        node["nullable"] = True
        if node.get("default") is None:
            node.pop("default", None)

    node.pop("title", None)
    if node.get("additionalProperties") is False:
        del node["additionalProperties"]
    if "const" in node:
        node["enum"] = [node.pop("const")]
        node.setdefault("type", "string")
    if "exclusiveMinimum" in node and not isinstance(node["exclusiveMinimum"], bool):
        node["minimum"] = node["exclusiveMinimum"]
        node["exclusiveMinimum"] = True
    if "exclusiveMaximum" in node and not isinstance(node["exclusiveMaximum"], bool):
        node["maximum"] = node["exclusiveMaximum"]
        node["exclusiveMaximum"] = True

    if "properties" in node:
        node["type"] = "object"
        node["properties"] = {k: to_structural(v, defs) for k, v in node["properties"].items()}
        required = set(node.get("required") or [])
        for name, child in node["properties"].items():
            # A nested object with no required fields defaults to its own defaults, so they apply when it
            # is left out. Written out in full (not `{}`): the API server validates a default, CEL rules
            # included, without applying the nested defaults first. A required child needs no default.
            # An optional (nullable) object stays absent when left out: `weightsCache: {}` would mean
            # something else than no cache.
            if (
                child.get("type") == "object"
                and "properties" in child
                and not child.get("required")
                and not child.get("nullable")
                and name not in required
            ):
                child.setdefault("default", _object_default(child))
    if isinstance(node.get("additionalProperties"), dict):
        node["additionalProperties"] = to_structural(node["additionalProperties"], defs)
    if "items" in node:
        node["items"] = to_structural(node["items"], defs)
    if "type" not in node and not (
        node.get("x-kubernetes-int-or-string") or node.get("x-kubernetes-preserve-unknown-fields")
    ):
        raise ValueError(f"schema node without a type: {node}")
    return node


def _object_default(node: dict[str, Any]) -> dict[str, Any]:
    """The value an object takes when left out: each property's own default, recursively."""
    return {
        name: copy.deepcopy(child["default"])
        for name, child in node["properties"].items()
        if "default" in child
    }


def _model_schema(model: type[Any]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    return to_structural(raw, defs)


def _status_schema(model: type[Any]) -> dict[str, Any]:
    schema = _model_schema(model)
    conditions = schema["properties"]["conditions"]
    conditions["x-kubernetes-list-type"] = "map"
    conditions["x-kubernetes-list-map-keys"] = ["type"]
    return schema


def _crd(
    *,
    name: str,
    kind: str,
    plural: str,
    singular: str,
    short_names: list[str],
    description: str,
    spec: dict[str, Any],
    status: dict[str, Any],
    root_rules: list[dict[str, Any]],
    columns: list[dict[str, Any]],
) -> dict[str, Any]:
    root = {
        "type": "object",
        "description": description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "transferjob.io/v1alpha1"},
            "kind": {"type": "string", "description": kind},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
        "x-kubernetes-validations": root_rules,
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": name,
            "labels": {"app.kubernetes.io/part-of": "transferjob"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": singular,
                "shortNames": short_names,
                "categories": ["all", "ml"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


def build_crd() -> dict[str, Any]:
    """The TransferJob CustomResourceDefinition object, ready to dump as YAML."""
    return _crd(
        name=CRD_NAME,
        kind=KIND,
        plural=PLURAL,
        singular=SINGULAR,
        short_names=SHORT_NAMES,
        description="A TransferJob trains a classifier on labelled images by transfer learning from a "
        "pretrained ImageNet CNN, by feature extraction or fine-tuning.",
        spec=_model_schema(TransferJobSpec),
        status=_status_schema(TransferJobStatus),
        root_rules=ROOT_RULES,
        columns=PRINTER_COLUMNS,
    )


def build_sweep_crd() -> dict[str, Any]:
    """The TransferSweep CustomResourceDefinition object, ready to dump as YAML."""
    return _crd(
        name=SWEEP_CRD_NAME,
        kind=SWEEP_KIND,
        plural=SWEEP_PLURAL,
        singular=SWEEP_SINGULAR,
        short_names=SWEEP_SHORT_NAMES,
        description="A TransferSweep searches hyper-parameters of a TransferJob template: it runs trial "
        "TransferJobs named <sweep>-<index>, stops unpromising ones early and records the best.",
        spec=_model_schema(TransferSweepSpec),
        status=_status_schema(TransferSweepStatus),
        root_rules=[rule.schema() for rule in TransferSweep.rules],
        columns=SWEEP_PRINTER_COLUMNS,
    )


def _render(crd: dict[str, Any], source: str) -> str:
    header = f"# Generated by `python -m transferjob.crd --write` from {source}. Do not edit.\n"
    return header + yaml.safe_dump(crd, sort_keys=False, width=100)


def render_crd() -> str:
    """The TransferJob CRD as the YAML text committed under manifests/crd/."""
    return _render(build_crd(), "sdk/transferjob/models.py")


def render_sweep_crd() -> str:
    """The TransferSweep CRD as the YAML text committed under manifests/crd/."""
    return _render(build_sweep_crd(), "sdk/transferjob/sweeps.py")


#: Each committed CRD file's name and how it is rendered.
RENDERED = {CRD_PATH.name: render_crd, SWEEP_CRD_PATH.name: render_sweep_crd}


def main(argv: list[str] | None = None) -> int:
    """Print, write or check the generated CRDs."""
    parser = argparse.ArgumentParser(prog="python -m transferjob.crd", description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", action="store_true", help=f"write the CRDs into {CRD_DIR}")
    group.add_argument("--check", action="store_true", help="exit 1 when a CRD there is out of date")
    parser.add_argument("--dir", type=Path, default=CRD_DIR, help="CRD folder (default: %(default)s)")
    args = parser.parse_args(argv)
    stale = 0
    for name, render in RENDERED.items():
        path, text = args.dir / name, render()
        if args.write:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
        elif args.check:
            if not path.exists() or path.read_text() != text:
                print(f"{path} is out of date: run `python -m transferjob.crd --write`", file=sys.stderr)
                stale += 1
            else:
                print(f"{path} is up to date")
        else:
            sys.stdout.write(text if name == CRD_PATH.name else f"---\n{text}")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
