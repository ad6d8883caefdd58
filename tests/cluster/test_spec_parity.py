"""One spec, one verdict: the SDK's models and the real API server accept and reject the same specs.

Hypothesis generates specs from the CRD's own schema, valid and broken: a known-good spec with one to
three fields replaced by values of the right type (in and out of range, enum near-misses, paths and URIs
of every shape) or of the wrong one (`"5"` for an integer, `"yes"` for a boolean, `5.0`, null, lists),
fields removed and unknown fields added. Each goes to `transferjob.models.parse_spec` and to
kube-apiserver as a dry-run create with strict field validation (what `kubectl apply` does), and the
test requires the same verdict; when both reject, both messages must name a field in common, so a user
hears about the same field from `tj submit` and from `kubectl apply`.

The examples are derandomized (the same ones on every run, so `make test` cannot flip); set
`TJ_PARITY_EXAMPLES` and `TJ_PARITY_RANDOM=1` to explore further, and add any spec found that way to the
adversarial corpus (tests/corpus/).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterator
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.cluster.admission import DryRun, same_field, sdk_verdict
from transferjob.crd import build_crd

EXAMPLES = int(os.environ.get("TJ_PARITY_EXAMPLES", "2000"))
RANDOM = os.environ.get("TJ_PARITY_RANDOM") == "1"

#: Known-good starting points, one per shape of job.
GOOD_SPECS: list[dict[str, Any]] = [
    {
        "data": {"source": {"pvc": {"claimName": "datasets", "subPath": "flowers"}}},
        "output": {"location": {"pvc": {"claimName": "models"}}},
    },
    {
        "mode": "FineTuning",
        "model": {"base": "/models/source.keras", "fineTuneAt": "conv3", "fromJob": "fe", "imageSize": 32},
        "data": {"source": {"hostPath": "/data/digits"}, "classNames": ["5", "6", "7"]},
        "training": {"epochs": 3, "learningRate": 1e-5, "earlyStopping": {"patience": 2}},
        "output": {"location": {"hostPath": "/models/ft"}},
        "resources": {"gpus": 0, "cpu": "2", "memory": "4Gi"},
        "runPolicy": {"backoffLimit": 1, "pendingTimeoutSeconds": 600},
    },
    {
        "mode": "FineTuning",
        "model": {
            "base": "ResNet50",
            "weights": "gs://weights/resnet50.h5",
            "imageSize": 160,
            "fineTuneAt": 140,
        },
        "data": {"source": {"uri": "s3://bucket/images"}, "trainDir": "a/train", "valDir": "a/val"},
        "output": {"location": {"uri": "gs://bucket/out"}},
        "resources": {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}]},
    },
]

#: Strings worth trying anywhere a string goes: names, paths and URIs of every shape, near-misses.
STRINGS = [
    "",
    " ",
    "a",
    "x" * 70,
    "MobileNetV2",
    "VGG16",
    "InceptionV3",
    "NASNetMobile",
    "imagenet",
    "none",
    "imagenet21k",
    "/models/source.keras",
    "/w/resnet50.h5",
    "gs://b/m.keras",
    "s3://b/w.hdf5",
    "models/source.keras",
    "../../etc/passwd.keras",
    "/m/../x.keras",
    "/m/a b.keras",
    "/m/$(id).keras",
    "/m/x.keras;rm",
    "/m/x.savedmodel",
    "/data",
    "/data/../etc",
    "relative/dir",
    "gs://bucket/dir",
    "file:///data",
    "not a uri",
    "train",
    "val",
    "test",
    "a/train",
    "./train",
    "train/",
    "a//b",
    ".",
    "..",
    "cats",
    "Not_A_Name",
    "fe",
    "ft-2",
    "block_13_expand",
    "conv3",
    "conv 3",
    "-1",
    "5",
    "0.5",
    "yes",
    "true",
    "16Gi",
    "-1Gi",
    "500m",
    "2",
    "1e9",
    "+1",
    "2 cores",
    "1.5Gi",
    "Exists",
    "Equal",
    "Maybe",
    "NoSchedule",
    "avg",
    "median",
    "val_loss",
    "adam",
    "adagrad9",
    "horizontal",
    "diagonal",
    "auto",
    "disk",
    "FeatureExtraction",
    "FineTuning",
    "Distillation",
    "IfNotPresent",
    "Sometimes",
    "high.priority",
    "High Priority",
]
#: Values of the wrong type for any field.
WRONG = [None, True, False, "5", "yes", 5.0, 0.5, -1, 0, [], {}, ["a"], {"a": 1}]


def _crd_spec_schema() -> dict[str, Any]:
    crd = build_crd()
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def _leaves(
    node: dict[str, Any], path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], dict[str, Any]]]:
    """Every field of the schema that a mutation may replace (objects too: they can be replaced whole)."""
    if path:
        yield path, node
    for name, child in (node.get("properties") or {}).items():
        yield from _leaves(child, (*path, name))


SCHEMA = _crd_spec_schema()
FIELDS = list(_leaves(SCHEMA))


def values(node: dict[str, Any], depth: int = 0) -> st.SearchStrategy[Any]:
    """Values for one schema node: mostly of its type (in and out of bounds), sometimes anything."""
    wrong = st.sampled_from(WRONG)
    kind = node.get("type")
    typed: st.SearchStrategy[Any]
    if node.get("x-kubernetes-int-or-string"):
        typed = st.integers(-3, 300) | st.sampled_from(STRINGS)
    elif "enum" in node:
        typed = st.sampled_from([*node["enum"], *STRINGS[-20:]])
    elif kind == "integer":
        low, high = node.get("minimum", -5), node.get("maximum", 10_000)
        edges = [low - 1, low, low + 1, high - 1, high, high + 1]
        typed = st.sampled_from([*edges, *map(float, edges)]) | st.integers(-5, 500)
    elif kind == "number":
        low, high = node.get("minimum", -1.0), node.get("maximum", 10.0)
        typed = st.sampled_from([low, high, -0.1, 0, 1, 1e-5, 0.5, 0.99]) | st.floats(
            low - 1, high + 1, allow_nan=False
        )
    elif kind == "boolean":
        typed = st.booleans()
    elif kind == "string":
        typed = st.sampled_from(STRINGS) | st.text(st.sampled_from("ab/._- $;:0"), max_size=12)
    elif kind == "array":
        typed = st.lists(values(node["items"], depth + 1), max_size=3) if depth < 3 else st.just([])
    elif kind == "object" and "properties" in node:
        props = node["properties"]
        required = set(node.get("required") or [])
        typed = (
            st.fixed_dictionaries(
                {k: values(props[k], depth + 1) for k in required},
                optional={k: values(v, depth + 1) for k, v in props.items() if k not in required},
            )
            if depth < 3
            else st.just({})
        )
    elif kind == "object":
        typed = st.dictionaries(
            st.sampled_from(["gpu", "zone", "a/b", ""]), st.sampled_from(STRINGS[:20]), max_size=2
        )
    else:
        typed = wrong
    return st.one_of(typed, typed, typed, wrong)


def _put(spec: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = spec
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[path[-1]] = value


def _drop(spec: dict[str, Any], path: tuple[str, ...]) -> None:
    node: Any = spec
    for key in path[:-1]:
        node = node.get(key) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            return
    node.pop(path[-1], None)


@st.composite
def specs(draw: st.DrawFn) -> tuple[dict[str, Any], int]:
    """A good spec with one to three changes (a field replaced, removed, or an unknown one added), and
    how many changes."""
    spec = copy.deepcopy(draw(st.sampled_from(GOOD_SPECS)))
    changes = draw(st.integers(1, 3))
    for _ in range(changes):
        path, node = draw(st.sampled_from(FIELDS))
        action = draw(st.sampled_from(["replace", "replace", "replace", "replace", "drop", "unknown"]))
        if action == "replace":
            # A copy: sampled values (WRONG's dicts, st.just({})) are shared objects, and later
            # changes write into what was put here.
            _put(spec, path, copy.deepcopy(draw(values(node))))
        elif action == "drop":
            _drop(spec, path)
        else:
            _put(spec, (*path[:-1], draw(st.sampled_from(["learnigRate", "extra", "imagesize"]))), 1)
    return spec, changes


def verdicts(dry_run: DryRun, spec: dict[str, Any]) -> tuple[str | None, str | None]:
    """(SDK error, API server error): None where that side accepts."""
    return sdk_verdict(spec), dry_run(spec)


def test_good_specs_are_good_on_both_sides(dry_run: DryRun) -> None:
    for spec in GOOD_SPECS:
        assert verdicts(dry_run, spec) == (None, None), spec


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not RANDOM,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=specs())
def test_sdk_and_api_server_give_the_same_verdict(dry_run: DryRun, case: tuple[dict[str, Any], int]) -> None:
    spec, changes = case
    sdk, api = verdicts(dry_run, spec)
    spec_json = json.dumps(spec, sort_keys=True)
    assert (sdk is None) == (api is None), f"SDK: {sdk}\nAPI server: {api}\nspec: {spec_json}"
    if sdk is not None and api is not None and changes == 1:
        assert same_field(sdk, api), f"no field in common\nSDK: {sdk}\nAPI server: {api}\nspec: {spec_json}"
