"""Creating TransferJobs as `kubectl apply` does, for the admission tests and the corpus."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from kubernetes import client

from transferjob.constants import GROUP, KIND, PLURAL, VERSION

#: spec -> the API server's error message, or None when it would admit the spec.
DryRun = Callable[[dict[str, Any]], "str | None"]


def create_transferjob(
    custom: client.CustomObjectsApi, namespace: str, name: str, spec: dict[str, Any], dry_run: bool = False
) -> str | None:
    """Create as `kubectl apply` does (strict field validation): the error message, or None."""
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": {"name": name}, "spec": spec}
    try:
        custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            body,
            field_validation="Strict",
            **({"dry_run": "All"} if dry_run else {}),
        )
    except client.ApiException as error:
        # 422 for schema and CEL violations; 400 for unknown fields under strict field validation.
        assert error.status in (400, 422), error.body
        return str(json.loads(error.body)["message"])
    return None
