#!/usr/bin/env python3
"""Offline validation of the manifests: every document of every YAML file against the Kubernetes JSON schemas
bundled with `kubernetes-validate` (no cluster, no network), in strict mode (an unknown field is an error).

    python3 -m venv .venv && .venv/bin/pip install kubernetes-validate==1.37.0 pyyaml
    .venv/bin/python deploy/kubernetes/validate.py deploy/kubernetes            # or some files
    .venv/bin/python deploy/kubernetes/validate.py --k8s 1.30.0 --k8s 1.37.0 deploy/kubernetes

kustomization.yaml is not a Kubernetes object: it is skipped here, and `resources_listed` reports what it lists.
Prints one JSON document on stdout: every manifest document (file, index, the object itself) with its error per
Kubernetes version (null when valid). Exit 0 when every document is valid for every version, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

DEFAULT_VERSIONS = ["1.30.0", "1.37.0"]
KUSTOMIZATION = "kustomization.yaml"


def manifest_files(paths: list[str]) -> tuple[list[Path], list[str] | None]:
    files: list[Path] = []
    listed: list[str] | None = None
    for name in paths:
        path = Path(name)
        candidates = sorted(path.glob("*.yaml")) + sorted(path.glob("*.yml")) if path.is_dir() else [path]
        for candidate in candidates:
            if candidate.name == KUSTOMIZATION:
                kustomization = yaml.safe_load(candidate.read_text()) or {}
                listed = list(kustomization.get("resources", []))
            else:
                files.append(candidate)
    return files, listed


def validate(obj: Any, version: str) -> str | None:
    if not isinstance(obj, dict):
        return f"not a mapping: {type(obj).__name__}"
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        path = "/".join(str(part) for part in error.path)
        return f"{path}: {error.message}"
    except kubernetes_validate.SchemaNotFoundError as error:
        return f"no schema: {error}"
    except kubernetes_validate.InvalidSchemaError as error:
        return f"invalid schema: {error}"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k8s", action="append", help=f"Kubernetes version (repeatable; default {DEFAULT_VERSIONS})")
    parser.add_argument("paths", nargs="+", help="manifest files or directories")
    args = parser.parse_args()
    versions: list[str] = args.k8s or DEFAULT_VERSIONS
    files, listed = manifest_files(args.paths)
    documents: list[dict[str, Any]] = []
    for file in files:
        try:
            objects = list(yaml.safe_load_all(file.read_text()))
        except yaml.YAMLError as parse_error:
            unparsed: dict[str, str | None] = {version: f"YAML: {parse_error}" for version in versions}
            documents.append({"file": str(file), "index": 0, "object": None, "errors": unparsed})
            continue
        for index, obj in enumerate(objects):
            if obj is None:
                continue
            errors: dict[str, str | None] = {version: validate(obj, version) for version in versions}
            documents.append({"file": str(file), "index": index, "object": obj, "errors": errors})
    ok = bool(documents) and all(error is None for doc in documents for error in doc["errors"].values())
    json.dump(
        {
            "validator": f"kubernetes-validate {getattr(kubernetes_validate, '__version__', '?')}",
            "versions": versions,
            "resources_listed": listed,
            "documents": documents,
            "ok": ok,
        },
        sys.stdout,
    )
    sys.stdout.write("\n")
    for doc in documents:
        for version, message in doc["errors"].items():
            if message is not None:
                print(f"{doc['file']}#{doc['index']} (Kubernetes {version}): {message}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
