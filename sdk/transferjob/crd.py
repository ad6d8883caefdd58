"""Render the TransferJob CustomResourceDefinition from the pydantic models.

The CRD is never edited by hand: `python -m transferjob.crd --write` regenerates
`manifests/crd/transferjob.io_transferjobs.yaml`, and a test fails when the committed file differs.

Pydantic emits JSON Schema 2020-12; Kubernetes wants a *structural* OpenAPI v3 subset. The translation
inlines `$ref`s, drops titles, turns `Optional[X]` into `nullable`, `int | str` into
`x-kubernetes-int-or-string` with the `anyOf: [integer, string]` Kubernetes publishes for its own
IntOrString (the one `anyOf` a structural schema allows; tools that read the file see both types),
numeric `exclusiveMinimum: N` into `minimum: N, exclusiveMinimum: true`, removes
`additionalProperties: false` (forbidden in CRDs; the API server prunes unknown fields instead), and
gives nested objects whose fields all have defaults a `default: {}` so the API server fills them in.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import yaml

from transferjob.constants import CRD_NAME, GROUP, KIND, PLURAL, SHORT_NAMES, SINGULAR, VERSION
from transferjob.models import TransferJobSpec, TransferJobStatus

CRD_PATH = Path("manifests/crd/transferjob.io_transferjobs.yaml")

PRINTER_COLUMNS = [
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
    if "type" not in node and not node.get("x-kubernetes-int-or-string"):
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


def _status_schema() -> dict[str, Any]:
    schema = _model_schema(TransferJobStatus)
    conditions = schema["properties"]["conditions"]
    conditions["x-kubernetes-list-type"] = "map"
    conditions["x-kubernetes-list-map-keys"] = ["type"]
    return schema


def build_crd() -> dict[str, Any]:
    """The CustomResourceDefinition object, ready to dump as YAML."""
    spec_schema = _model_schema(TransferJobSpec)
    root = {
        "type": "object",
        "description": "A TransferJob trains a classifier on labelled images by transfer learning from a "
        "pretrained ImageNet CNN, by feature extraction or fine-tuning.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "transferjob.io/v1alpha1"},
            "kind": {"type": "string", "description": "TransferJob"},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": _status_schema(),
        },
        "x-kubernetes-validations": ROOT_RULES,
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": CRD_NAME,
            "labels": {"app.kubernetes.io/part-of": "transferjob"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": SHORT_NAMES,
                "categories": ["all", "ml"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


def render_crd() -> str:
    """The CRD as the YAML text committed under manifests/crd/."""
    header = (
        "# Generated by `python -m transferjob.crd --write` from sdk/transferjob/models.py. Do not edit.\n"
    )
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=100)


def main(argv: list[str] | None = None) -> int:
    """Print, write or check the generated CRD."""
    parser = argparse.ArgumentParser(prog="python -m transferjob.crd", description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", action="store_true", help=f"write {CRD_PATH}")
    group.add_argument("--check", action="store_true", help=f"exit 1 when {CRD_PATH} is out of date")
    parser.add_argument("--path", type=Path, default=CRD_PATH, help="CRD file (default: %(default)s)")
    args = parser.parse_args(argv)
    text = render_crd()
    if args.write:
        args.path.parent.mkdir(parents=True, exist_ok=True)
        args.path.write_text(text)
        print(f"wrote {args.path}")
    elif args.check:
        if not args.path.exists() or args.path.read_text() != text:
            print(f"{args.path} is out of date: run `python -m transferjob.crd --write`", file=sys.stderr)
            return 1
        print(f"{args.path} is up to date")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
