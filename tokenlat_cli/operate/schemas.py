"""Kubernetes manifests checked against the API server's own schemas, without a cluster.

Renders that a cluster would refuse (a misspelt field, a string where an integer belongs, a missing required
field) should fail a unit test here, not a rollout. Two sources of schemas, both pinned and read offline:

- Kubernetes' built-in kinds (Deployment, DaemonSet, Service, ConfigMap, Secret, HorizontalPodAutoscaler, ...):
  the JSON schemas the ``kubernetes-validate`` package (PyPI, pinned in pyproject.toml) ships, generated from the
  API server's OpenAPI document of Kubernetes ``KUBERNETES_VERSION``, in their strict form (unknown fields are
  errors, as ``kubectl apply`` with its default strict field validation makes them).
- Custom resources (KEDA's ScaledObject and TriggerAuthentication): the ``openAPIV3Schema`` of their
  CustomResourceDefinitions, vendored byte for byte from the KEDA module (``crds/keda-<version>/``; the pinned
  version and the files' SHA-256 are in ``CRDS`` below, and tests/e2e/test_keda_crds.py compares them with the
  module the Go module proxy serves). Unknown fields are errors here too (the API server's strict field
  validation), except where the schema says ``x-kubernetes-preserve-unknown-fields``.

What no schema here checks: CEL rules (``x-kubernetes-validations``, e.g. KEDA's min <= max replicas), admission
webhooks, and whether referenced objects (a Secret, a Deployment) exist. Renderers check what they rely on.

One entry point for every renderer's tests: :func:`problems` for one document, :func:`check_manifests` for a
multi-document YAML text. jsonschema and kubernetes-validate are imported only when a check runs.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

#: The Kubernetes release whose API schemas built-in kinds are checked against (one kubernetes-validate ships).
KUBERNETES_VERSION = "1.37.0"
#: The KEDA release whose CRDs are vendored in crds/ (module github.com/kedacore/keda/v2, config/crd/bases/).
KEDA_VERSION = "v2.21.0"
KEDA_MODULE = "github.com/kedacore/keda/v2"
#: The module zip's go.sum hash: what `go mod download -json` reports as Sum for KEDA_VERSION.
KEDA_MODULE_SUM = "h1:R6z2HZvstK4RLUMxroNACzBj74xGxt3kG59b5Xc+Xps="
#: prometheus-adapter (sigs.k8s.io/prometheus-adapter) whose config format ADAPTER_CONFIG_SCHEMA mirrors.
ADAPTER_VERSION = "v0.12.0"
CRD_DIR = Path(__file__).with_name("crds") / f"keda-{KEDA_VERSION}"
_DEFINITIONS_ID = "/api/_definitions.json"


@dataclass(frozen=True)
class Crd:
    """A vendored CustomResourceDefinition: its file under CRD_DIR (as named in the module) and SHA-256."""

    filename: str
    sha256: str


#: (apiVersion, kind) -> the CRD file whose openAPIV3Schema checks it.
CRDS: dict[tuple[str, str], Crd] = {
    ("keda.sh/v1alpha1", "ScaledObject"): Crd(
        "keda.sh_scaledobjects.yaml", "af35555862a83933b074af14ad439c4b4ceabaf4daa3e9338e9b23e36d308d80"
    ),
    ("keda.sh/v1alpha1", "TriggerAuthentication"): Crd(
        "keda.sh_triggerauthentications.yaml", "ed59ab37b2fa9a18119484a3dbd849b0b18ed25e1aea91d9f1305d4da2215bd8"
    ),
}


class ManifestError(ValueError):
    """Manifests that do not match their schemas: every problem, one per line (``kind/name: path: reason``)."""


def crd_sha256(crd: Crd) -> str:
    return hashlib.sha256((CRD_DIR / crd.filename).read_bytes()).hexdigest()


def _k8s_schema_dir() -> Any:
    return resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"v{KUBERNETES_VERSION}-local-strict"


@functools.cache
def _k8s_json(filename: str) -> Any:
    path = _k8s_schema_dir() / filename
    if not path.is_file():
        raise KeyError(filename)
    return json.loads(path.read_text(encoding="utf-8"))


def _structural_to_json_schema(node: Any) -> Any:
    """A CRD's OpenAPI v3 structural schema as JSON Schema, with the API server's strict field validation: objects
    with listed properties refuse others (unless they preserve unknown fields), ``nullable`` admits null and
    ``x-kubernetes-int-or-string`` admits both. CEL rules (x-kubernetes-validations) are dropped: not checked."""
    if isinstance(node, list):
        return [_structural_to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {
        key: _structural_to_json_schema(value)
        for key, value in node.items()
        if not key.startswith("x-kubernetes-") and key != "nullable"
    }
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if (
        "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@functools.cache
def _crd_schema(api_version: str, kind: str) -> dict[str, Any]:
    crd = CRDS[(api_version, kind)]
    document = yaml.safe_load((CRD_DIR / crd.filename).read_text(encoding="utf-8"))
    group, version = api_version.split("/")
    if document["spec"]["group"] != group or document["spec"]["names"]["kind"] != kind:
        raise ValueError(f"{crd.filename} defines {document['spec']['names']['kind']}, not {kind}")
    (served,) = (v for v in document["spec"]["versions"] if v["name"] == version)
    schema: dict[str, Any] = _structural_to_json_schema(copy.deepcopy(served["schema"]["openAPIV3Schema"]))
    # The API server checks metadata as an ObjectMeta, whatever the CRD says (it says only "type: object").
    schema["properties"]["metadata"] = {
        "$ref": f"{_DEFINITIONS_ID}#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
    }
    schema["properties"]["apiVersion"] = {"const": api_version}
    schema["properties"]["kind"] = {"const": kind}
    schema["required"] = sorted({*schema.get("required", ()), "apiVersion", "kind", "metadata"})
    return schema


def _schema_for(api_version: str, kind: str) -> dict[str, Any]:
    """The schema of a kind: a vendored CRD's, else Kubernetes' own (kubernetes-validate's file naming: the
    group's first label and the version, e.g. horizontalpodautoscaler-autoscaling-v2.json, configmap-v1.json)."""
    if (api_version, kind) in CRDS:
        return _crd_schema(api_version, kind)
    group_version = api_version.split("/")
    suffix = group_version[0] if len(group_version) == 1 else f"{group_version[0].split('.')[0]}-{group_version[1]}"
    try:
        schema: dict[str, Any] = _k8s_json(f"{kind.lower()}-{suffix}.json")
    except KeyError:
        raise ManifestError(
            f"{api_version} {kind}: no schema (neither Kubernetes {KUBERNETES_VERSION} nor a vendored CRD has it)"
        ) from None
    return schema


@functools.cache
def _registry() -> Any:
    from referencing import Registry, Resource

    definitions = Resource.from_contents(_k8s_json("_definitions.json"))
    return Registry().with_resource(_DEFINITIONS_ID, definitions)


def problems(document: dict[str, Any]) -> list[str]:
    """Every way ``document`` (one manifest) fails its kind's schema, as ``path: reason`` lines; [] when valid."""
    import jsonschema

    if not isinstance(document, dict) or not document.get("apiVersion") or not document.get("kind"):
        return ["a manifest needs apiVersion and kind"]
    try:
        schema = _schema_for(str(document["apiVersion"]), str(document["kind"]))
    except ManifestError as exc:
        return [str(exc)]
    validator = jsonschema.Draft202012Validator(schema, registry=_registry())
    found = []
    for error in sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.absolute_path))):
        # The deepest cause, where a oneOf/anyOf hides it, says what is wrong.
        best = jsonschema.exceptions.best_match([error])
        where = ".".join(map(str, best.absolute_path)) or "(top)"
        found.append(f"{where}: {best.message}")
    return found


def check_manifests(text: str, source: str = "manifest") -> list[dict[str, Any]]:
    """The documents of a multi-document YAML text, each checked against its schema; ManifestError naming every
    problem of every document otherwise. Empty documents (a comment-only one) are skipped."""
    documents = [d for d in yaml.safe_load_all(text) if d is not None]
    lines = []
    for document in documents:
        name = document.get("metadata", {}).get("name", "?") if isinstance(document, dict) else "?"
        kind = document.get("kind", "?") if isinstance(document, dict) else "?"
        lines.extend(f"{source}: {kind}/{name}: {problem}" for problem in problems(document))
    if not documents:
        lines.append(f"{source}: no manifest in it")
    if lines:
        raise ManifestError("\n".join(lines))
    return documents


def _strict(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


_ADAPTER_MAPPING = _strict(
    {
        "template": {"type": "string"},
        "overrides": {
            "type": "object",
            "additionalProperties": _strict({"group": {"type": "string"}, "resource": {"type": "string"}}),
        },
        "namespaced": {"type": "boolean"},
    }
)
_ADAPTER_RULE = _strict(
    {
        "seriesQuery": {"type": "string", "minLength": 1},
        "seriesFilters": {"type": "array", "items": _strict({"is": {"type": "string"}, "isNot": {"type": "string"}})},
        "resources": _ADAPTER_MAPPING,
        "name": _strict({"matches": {"type": "string"}, "as": {"type": "string"}}),
        "metricsQuery": {"type": "string"},
    },
    ("seriesQuery",),
)
#: prometheus-adapter's config file (pkg/config/config.go at ADAPTER_VERSION: MetricsDiscoveryConfig and
#: DiscoveryRule), which it reads with yaml.UnmarshalStrict: an unknown key stops the adapter, so it is an error here.
#: resourceRules (CPU and memory for `kubectl top`) are not written by tokenlat and are not allowed here.
ADAPTER_CONFIG_SCHEMA = _strict(
    {"rules": {"type": "array", "items": _ADAPTER_RULE}, "externalRules": {"type": "array", "items": _ADAPTER_RULE}}
)


def adapter_config_problems(text: str) -> list[str]:
    """Every way a prometheus-adapter config text fails ADAPTER_CONFIG_SCHEMA; [] when valid."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(ADAPTER_CONFIG_SCHEMA)
    return [
        f"{'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
        for e in validator.iter_errors(yaml.safe_load(text))
    ]
