"""YAML read as `kubectl` reads it, so one manifest means the same to `tj` and to `kubectl apply`.

PyYAML implements YAML 1.1, whose float rule requires a dot: `1e-5` (and the `1e-05` that Python's
`json.dumps` writes for a small learning rate) is a *string* to `yaml.safe_load`, a float to kubectl
(sigs.k8s.io/yaml parses it as a number), and a float in JSON. Strict validation would then reject a
manifest kubectl accepts. `Loader` adds the YAML 1.2 / JSON float forms and changes nothing else.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

#: Floats with an exponent and no dot (`1e-5`, `2E3`, `-1e+07`): YAML 1.2 and JSON numbers.
_EXPONENT_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$")


class Loader(yaml.SafeLoader):
    """`yaml.SafeLoader` that also reads `1e-5` as a float."""


Loader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789"))


def load(text: str) -> Any:
    """One YAML (or JSON) document."""
    return yaml.load(text, Loader=Loader)


def load_all(text: str) -> list[Any]:
    """Every document of a YAML stream."""
    return list(yaml.load_all(text, Loader=Loader))
