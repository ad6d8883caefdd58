"""The committed CRDs are exactly what the models generate, and they are structural schemas Kubernetes
accepts: the TransferJob's from transferjob.models, the TransferSweep's from transferjob.sweeps."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from transferjob import crd
from transferjob.models import TransferJobSpec, rule_field_parts
from transferjob.sweeps import TransferSweepSpec

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / crd.CRD_PATH
FORBIDDEN = {
    "$ref",
    "definitions",
    "$defs",
    "uniqueItems",
    "title",
    "allOf",
    "oneOf",
    "anyOf",
    "not",
    "const",
}


def _schema() -> dict[str, Any]:
    return crd.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from _walk(child, f"{path}.{name}")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}[*]")
    if "items" in node:
        yield from _walk(node["items"], f"{path}[]")


def test_committed_crd_matches_the_models() -> None:
    assert COMMITTED.read_text() == crd.render_crd(), "run `python -m transferjob.crd --write` and commit"


def test_drift_check_command_fails_on_a_stale_file(tmp_path: Path) -> None:
    assert crd.main(["--write", "--dir", str(tmp_path)]) == 0
    assert crd.main(["--check", "--dir", str(tmp_path)]) == 0
    for name in crd.RENDERED:
        stale = tmp_path / name
        text = stale.read_text()
        stale.write_text(text.replace("default: 16", "default: 32"))
        assert crd.main(["--check", "--dir", str(tmp_path)]) == 1, name
        stale.write_text(text)
    assert crd.main(["--check", "--dir", str(tmp_path)]) == 0


def test_schema_is_structural() -> None:
    for path, node in _walk(_schema()):
        if node.get("x-kubernetes-int-or-string"):
            # The one pattern a structural schema allows beside int-or-string: this anyOf and no type.
            assert node.get("anyOf") == [{"type": "integer"}, {"type": "string"}], path
            assert "type" not in node, path
            node = {k: v for k, v in node.items() if k != "anyOf"}
        assert not FORBIDDEN & node.keys(), f"{path}: forbidden keys {FORBIDDEN & node.keys()}"
        assert node.get("additionalProperties") is not False, path
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path} has no type"
        assert not ("properties" in node and "additionalProperties" in node), path
        if isinstance(node.get("exclusiveMinimum"), (int, float)) and not isinstance(
            node["exclusiveMinimum"], bool
        ):
            raise AssertionError(f"{path}: exclusiveMinimum must be a boolean in OpenAPI v3")


def test_fine_tune_at_is_rendered_as_int_or_string() -> None:
    """As Kubernetes publishes its own IntOrString, so schema readers see both types, not an object.

    `kubectl explain` still prints `<Object>` for any CRD int-or-string field (kubernetes/kubernetes#130946),
    so the description starts by saying what the field takes.
    """
    node = _schema()["properties"]["spec"]["properties"]["model"]["properties"]["fineTuneAt"]
    assert node["x-kubernetes-int-or-string"] is True
    assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}]
    assert "type" not in node and node["nullable"] is True
    assert node["description"].startswith("Integer or string.")


def test_every_spec_field_is_documented() -> None:
    spec = _schema()["properties"]["spec"]
    undocumented = [
        p for p, node in _walk(spec) if p and not p.endswith(("[]", "[*]")) and not node.get("description")
    ]
    assert not undocumented


def test_names_columns_and_subresources() -> None:
    obj = yaml.safe_load(COMMITTED.read_text())
    assert obj["metadata"]["name"] == "transferjobs.transferjob.io"
    names = obj["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == ("TransferJob", "transferjobs", ["tj"])
    version = obj["spec"]["versions"][0]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns == {
        "Phase": ".status.phase",
        "Mode": ".spec.mode",
        "Model": ".spec.model.base",
        "Epoch": ".status.epoch",
        "Progress": ".status.progress.percent",
        "Step": ".status.progress.step",
        "Left-Seconds": ".status.progress.remainingSeconds",
        "Val-Acc": ".status.metrics.valAccuracy",
        "Test-Acc": ".status.test.accuracy",
        "Age": ".metadata.creationTimestamp",
    }


def test_api_version_agrees_with_group_and_version() -> None:
    """API_VERSION is spelled out for the type checker; it must still be GROUP/VERSION."""
    from transferjob import constants

    assert f"{constants.GROUP}/{constants.VERSION}" == constants.API_VERSION


def test_printer_columns_point_at_real_fields() -> None:
    schema = _schema()
    for column in crd.PRINTER_COLUMNS:
        node = schema
        for key in column["jsonPath"].strip(".").split("."):
            if key == "metadata":
                break
            node = node["properties"][key]


def test_schema_defaults_equal_model_defaults() -> None:
    """A spec defaulted by the API server and one defaulted by pydantic must be the same spec."""
    spec_schema = _schema()["properties"]["spec"]
    minimal = {"data": {"source": {"hostPath": "/d"}}, "output": {"location": {"hostPath": "/o"}}}

    server_side = _apply_defaults(spec_schema, minimal)
    assert TransferJobSpec.model_validate(server_side) == TransferJobSpec.model_validate(minimal)
    assert server_side["training"]["batchSize"] == 16
    assert server_side["model"]["head"]["dropout"] == 0.2
    assert server_side["training"]["earlyStopping"]["patience"] == 3


def _apply_defaults(node: dict[str, Any], value: Any) -> Any:
    """What the API server's defaulting does to `value` under the schema `node` (objects only)."""
    if value is None:
        if "default" not in node:
            return None
        value = node["default"]
    if isinstance(value, dict) and "properties" in node:
        out = dict(value)
        for name, child in node["properties"].items():
            filled = _apply_defaults(child, out.get(name))
            if filled is not None:
                out[name] = filled
        return out
    return value


def test_cel_rules_refer_to_existing_fields() -> None:
    for path, node in _walk(_schema()):
        for rule in node.get("x-kubernetes-validations", []):
            for field in re.findall(r"self\.(\w+)", rule["rule"]):
                assert field in node["properties"], f"{path}: {rule['rule']} names unknown {field}"
            assert rule["message"]


def test_spec_is_immutable_but_suspend_is_not() -> None:
    rules = _schema()["properties"]["spec"]["x-kubernetes-validations"]
    transition = [r for r in rules if "oldSelf" in r["rule"]]
    assert len(transition) == 1
    assert "suspend" not in transition[0]["rule"]
    assert "ttlSecondsAfterFinished" not in transition[0]["rule"]


# --------------------------------------------------------------------------------------- TransferSweep


def _sweep_schema() -> dict[str, Any]:
    return crd.build_sweep_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_committed_sweep_crd_matches_the_models() -> None:
    committed = ROOT / crd.SWEEP_CRD_PATH
    assert committed.read_text() == crd.render_sweep_crd(), (
        "run `python -m transferjob.crd --write` and commit"
    )


def test_both_crds_are_installed_by_kustomize() -> None:
    kustomization = yaml.safe_load((ROOT / "manifests" / "kustomization.yaml").read_text())
    for path in (crd.CRD_PATH, crd.SWEEP_CRD_PATH):
        assert str(path.relative_to("manifests")) in kustomization["resources"]


def test_sweep_schema_is_structural() -> None:
    for path, node in _walk(_sweep_schema()):
        if node.get("x-kubernetes-int-or-string"):
            assert node.get("anyOf") == [{"type": "integer"}, {"type": "string"}], path
            assert "type" not in node, path
            node = {k: v for k, v in node.items() if k != "anyOf"}
        assert not FORBIDDEN & node.keys(), f"{path}: forbidden keys {FORBIDDEN & node.keys()}"
        assert node.get("additionalProperties") is not False, path
        if "type" not in node:
            # Only a trial's parameter value (any JSON scalar) goes untyped, and says so.
            assert node.get("x-kubernetes-int-or-string") or (
                path == ".status.trials[].parameters[*]"
                and node == {"x-kubernetes-preserve-unknown-fields": True}
            ), f"{path} has no type"


def test_sweep_names_columns_and_subresources() -> None:
    obj = yaml.safe_load((ROOT / crd.SWEEP_CRD_PATH).read_text())
    assert obj["metadata"]["name"] == "transfersweeps.transferjob.io"
    names = obj["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == (
        "TransferSweep",
        "transfersweeps",
        ["tsw"],
    )
    assert obj["spec"]["scope"] == "Namespaced"
    version = obj["spec"]["versions"][0]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"] if "priority" not in c}
    assert columns == {
        "Phase": ".status.phase",
        "Metric": ".spec.objective.metric",
        "Best": ".status.bestTrial.objective",
        "Done": ".status.finishedTrials",
        "Trials": ".spec.maxTrials",
        "Age": ".metadata.creationTimestamp",
    }


def test_sweep_printer_columns_point_at_real_fields() -> None:
    schema = _sweep_schema()
    for column in crd.SWEEP_PRINTER_COLUMNS:
        node = schema
        for key in column["jsonPath"].strip(".").split("."):
            if key == "metadata":
                break
            node = node["properties"][key]


def test_every_sweep_spec_field_is_documented() -> None:
    spec = _sweep_schema()["properties"]["spec"]
    undocumented = [
        p for p, node in _walk(spec) if p and not p.endswith(("[]", "[*]")) and not node.get("description")
    ]
    assert not undocumented


def test_sweep_cel_rules_refer_to_existing_fields() -> None:
    """Rules name properties as CEL spells them: `training.learningRate` is `training__dot__learningRate`."""
    for path, node in _walk(_sweep_schema()):
        for rule in node.get("x-kubernetes-validations", []):
            for field in re.findall(r"self\.(\w+)", rule["rule"]):
                name = field.replace("__dot__", ".")
                assert name in node["properties"], f"{path}: {rule['rule']} names unknown {field}"
            assert rule["message"]
            if "fieldPath" in rule:
                names = rule_field_parts(rule["fieldPath"])
                target = node
                for name in names:
                    target = target["properties"][name]


def test_sweep_spec_is_immutable_but_parallelism_and_suspend_are_not() -> None:
    spec = _sweep_schema()["properties"]["spec"]
    transition = [r for r in spec["x-kubernetes-validations"] if "oldSelf" in r["rule"]]
    assert len(transition) == 1
    compared = set(re.findall(r"self\.(\w+) == oldSelf", transition[0]["rule"]))
    assert compared == set(spec["properties"]) - {"parallelTrials", "suspend"}
    # The template's own TransferJob transition rule is not there: the sweep's covers it.
    template = spec["properties"]["template"]
    assert not [r for r in template["x-kubernetes-validations"] if "oldSelf" in r["rule"]]


def test_sweep_schema_defaults_equal_model_defaults() -> None:
    spec_schema = _sweep_schema()["properties"]["spec"]
    minimal = {
        "template": {"data": {"source": {"hostPath": "/d"}}, "output": {"location": {"hostPath": "/o"}}},
        "parameters": {"training.batchSize": {"int": {"min": 8, "max": 64}}},
        "objective": {"metric": "valLoss"},
    }
    server_side = _apply_defaults(spec_schema, minimal)
    assert TransferSweepSpec.model_validate(server_side) == TransferSweepSpec.model_validate(minimal)
    assert server_side["parameters"]["training.batchSize"]["int"]["step"] == 1
    assert server_side["algorithm"] == {"name": "Random", "seed": 0}
    assert server_side["template"]["training"]["batchSize"] == 16
