"""The public surface: one error tree with causes kept, watch events exported, shared names defined once.

A caller writes `except transferjob.TransferJobError` and catches whatever any part of the project
raises; `error.__cause__` still says what went wrong underneath (the API's response, pydantic's
errors). The source scans below read the code (AST), not a list kept by hand, so a new error class
outside the tree or a new private copy of `Json` fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from kubernetes.client.rest import ApiException

import transferjob
from transferjob.backends.kubernetes import KubernetesBackend
from transferjob.errors import BackendError, JobNotFoundError, SpecError, TransferJobError
from transferjob.models import parse_spec

ROOT = Path(__file__).resolve().parents[2]
SOURCE_ROOTS = [ROOT / "sdk", ROOT / "operator", ROOT / "trainer_image", ROOT / "testing"]
PRODUCT_ROOTS = SOURCE_ROOTS[:3]


def _modules(roots: list[Path]) -> list[tuple[Path, ast.Module]]:
    return [(path, ast.parse(path.read_text())) for root in roots for path in sorted(root.rglob("*.py"))]


def test_watch_events_and_errors_are_exported() -> None:
    names = ("PhaseChanged", "EpochCompleted", "StepAdvanced", "WatchEvent", "JobEvent", "SpecError")
    for name in (*names, "TransferJobError"):
        assert name in transferjob.__all__, name
        assert hasattr(transferjob, name), name
    assert issubclass(transferjob.SpecError, TransferJobError)
    assert issubclass(transferjob.SpecError, ValueError)  # code that validates the standard way catches it


def test_every_exception_class_of_the_shipped_packages_is_a_transferjob_error() -> None:
    bases: dict[str, list[str]] = {}
    for path, tree in _modules(PRODUCT_ROOTS):
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                names = [b.id if isinstance(b, ast.Name) else ast.unparse(b) for b in node.bases]
                bases[f"{path.name}:{node.name}"] = names
    by_name: dict[str, list[str]] = {key.split(":")[1]: value for key, value in bases.items()}

    def is_error(name: str, seen: frozenset[str] = frozenset()) -> bool | None:
        """True: reaches TransferJobError; False: reaches a builtin exception first; None: not an error."""
        if name == "TransferJobError":
            return True
        if name in seen or name not in by_name:
            return False if name.endswith(("Error", "Exception")) else None
        verdicts = [is_error(b, seen | {name}) for b in by_name[name]]
        if True in verdicts:
            return True
        return False if False in verdicts else None

    outside = sorted(key for key in bases if is_error(key.split(":")[1]) is False)
    assert outside == [], f"exception classes outside the TransferJobError tree: {outside}"


def test_json_alias_is_defined_once() -> None:
    definitions = []
    for path, tree in _modules([*SOURCE_ROOTS, ROOT / "tests", ROOT / "hack", ROOT / "bench"]):
        for node in tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            if any(isinstance(t, ast.Name) and t.id == "Json" for t in targets):
                definitions.append(str(path.relative_to(ROOT)))
    assert definitions == ["sdk/transferjob/types.py"]


def test_spec_error_keeps_pydantics_errors_as_its_cause() -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec({"mode": "FeatureExtraction", "model": {"base": "MobileNetV2"}})
    assert caught.value.problems and all(p.startswith("spec.") for p in caught.value.problems)
    assert type(caught.value.__cause__).__name__ == "ValidationError"


@pytest.mark.parametrize(
    ("status", "expected"), [(404, JobNotFoundError), (500, BackendError), (422, SpecError)]
)
def test_api_errors_become_sdk_errors_with_the_response_as_cause(status: int, expected: type) -> None:
    backend = KubernetesBackend(namespace="ns", api_client=object())  # type: ignore[arg-type]
    response = ApiException(status=status, reason="refused")

    def refuse() -> None:
        raise response

    with pytest.raises(expected) as caught:
        backend._call("job", refuse)
    assert caught.value.__cause__ is response
