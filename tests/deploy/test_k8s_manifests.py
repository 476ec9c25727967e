"""The Kubernetes manifests in deploy/ against the Kubernetes JSON schemas, offline, so that a typo there fails CI.

The schemas are those that kubernetes-validate ships, in their strict form (no field the API does not define), so a
misspelt field, a wrong type, a missing required field or an unknown kind is an error. PyYAML keeps the last of two
equal keys without a word; the loader here refuses them, as `kubectl apply` does.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_validate.utils import SchemaNotFoundError, ValidationError, validate

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy"
MANIFESTS = sorted(path for pattern in ("*.yaml", "*.yml") for path in DEPLOY.rglob(pattern))
# The newest Kubernetes release whose schemas kubernetes-validate 1.37 ships; raise it with the package.
KUBERNETES_VERSION = "1.37"


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping with the same key twice."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    keys = [loader.construct_object(key, deep=True) for key, _ in node.value]
    for index, key in enumerate(keys):
        if key in keys[:index]:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", node.start_mark)
    return loader.construct_mapping(node, deep=True)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_documents(text: str) -> list[Any]:
    return [document for document in yaml.load_all(text, Loader=_UniqueKeyLoader) if document is not None]


def schema_errors(document: Any) -> list[str]:
    """Why `document` is not a valid Kubernetes object (empty when it is)."""
    if not isinstance(document, dict) or not {"apiVersion", "kind"} <= document.keys():
        return ["not a Kubernetes object (no apiVersion and kind)"]
    name = f"{document['kind']}/{(document.get('metadata') or {}).get('name', '?')}"
    try:
        validate(document, KUBERNETES_VERSION, strict=True)
    except ValidationError as error:
        where = ".".join(map(str, error.absolute_path)) or "(root)"
        return [f"{name}: {where}: {error.message}"]
    except SchemaNotFoundError as error:
        return [f"{name}: {error.message}"]
    return []


def manifest_errors(text: str) -> list[str]:
    try:
        documents = load_documents(text)
    except yaml.YAMLError as error:
        return [f"not valid YAML: {error}"]
    if not documents:
        return ["no Kubernetes object in the file"]
    return [problem for document in documents for problem in schema_errors(document)]


# --- the real manifests ---------------------------------------------------------------------------------------------


def test_deploy_has_manifests() -> None:
    assert {path.name for path in MANIFESTS} >= {"gateway-deployment.yaml", "gateway-sidecar.yaml"}


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda path: str(path.relative_to(DEPLOY)))
def test_manifest_is_valid_for_kubernetes(path: Path) -> None:
    errors = manifest_errors(path.read_text(encoding="utf-8"))
    assert not errors, f"{path.relative_to(REPO_ROOT)}:\n  " + "\n  ".join(errors)


# --- the check itself, on broken copies -----------------------------------------------------------------------------

DEPLOYMENT_FILE = DEPLOY / "kubernetes" / "gateway-deployment.yaml"


def deployment_copy() -> tuple[list[Any], dict[str, Any]]:
    """The documents of gateway-deployment.yaml, and its Deployment's container."""
    documents = copy.deepcopy(load_documents(DEPLOYMENT_FILE.read_text(encoding="utf-8")))
    deployment = next(document for document in documents if document["kind"] == "Deployment")
    return documents, deployment["spec"]["template"]["spec"]["containers"][0]


def misspell_a_field(container: dict[str, Any]) -> None:
    container["readinesProbe"] = container.pop("readinessProbe")


def give_a_wrong_type(container: dict[str, Any]) -> None:
    container["ports"][0]["containerPort"] = "http"


def drop_a_required_field(container: dict[str, Any]) -> None:
    del container["name"]


def misspell_a_nested_field(container: dict[str, Any]) -> None:
    container["securityContext"]["runAsNonroot"] = container["securityContext"].pop("runAsNonRoot")


@pytest.mark.parametrize(("mutate", "expected"), [
    (misspell_a_field, "'readinesProbe' was unexpected"),
    (give_a_wrong_type, "'http' is not of type 'integer'"),
    (drop_a_required_field, "'name' is a required property"),
    (misspell_a_nested_field, "'runAsNonroot' was unexpected"),
], ids=lambda value: getattr(value, "__name__", ""))
def test_a_broken_copy_of_a_manifest_is_refused(mutate: Any, expected: str) -> None:
    documents, container = deployment_copy()
    mutate(container)
    errors = manifest_errors(yaml.safe_dump_all(documents))
    assert len(errors) == 1, errors
    assert errors[0].startswith("Deployment/dicom-gateway: spec.template.spec.containers.0"), errors
    assert expected in errors[0], errors


def test_an_unknown_kind_is_refused() -> None:
    documents, _ = deployment_copy()
    next(document for document in documents if document["kind"] == "Deployment")["kind"] = "Deploymnet"
    assert manifest_errors(yaml.safe_dump_all(documents)) == [
        "Deploymnet/dicom-gateway: Couldn't find schema for kind Deploymnet with api version apps/v1 "
        "for kubernetes version 1.37"
    ]


def test_a_duplicated_key_is_refused() -> None:
    text = DEPLOYMENT_FILE.read_text(encoding="utf-8")
    assert text.count("  replicas: 2\n") == 1
    errors = manifest_errors(text.replace("  replicas: 2\n", "  replicas: 2\n  replicas: 3\n"))
    assert len(errors) == 1, errors
    assert "duplicate key 'replicas'" in errors[0]
