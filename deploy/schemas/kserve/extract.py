"""Extract the openAPIV3Schema of every served version of a KServe CRD into
deploy/schemas/kserve/ (the files tests/deploy/test_manifests.py validates the
KServe manifests against) and print the entry for sources.json.

    git clone --depth 1 --branch v0.20.0 https://github.com/kserve/kserve /tmp/kserve
    .venv/bin/python deploy/schemas/kserve/extract.py \
        /tmp/kserve/config/crd/full/serving.kserve.io_servingruntimes.yaml \
        /tmp/kserve/config/crd/full/serving.kserve.io_inferenceservices.yaml

The schemas are written as they are in the CRD (no key dropped or changed), as
sorted, compact JSON, so extracting the same CRD again gives the same bytes."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent


def extract(crd_path: Path) -> list[dict[str, str]]:
    raw = crd_path.read_bytes()
    crd = yaml.load(raw, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    if crd.get("kind") != "CustomResourceDefinition":
        raise SystemExit(f"{crd_path}: not a CustomResourceDefinition")
    group = crd["spec"]["group"]
    kind = crd["spec"]["names"]["kind"]
    entries = []
    for version in crd["spec"]["versions"]:
        if not version.get("served", False):
            continue
        name = f"{kind.lower()}-{version['name']}.json"
        text = json.dumps(version["schema"]["openAPIV3Schema"], sort_keys=True) + "\n"
        (HERE / name).write_text(text)
        entries.append(
            {
                "apiVersion": f"{group}/{version['name']}",
                "kind": kind,
                "file": name,
                "sha256": hashlib.sha256(text.encode()).hexdigest(),
                "crd": crd_path.name,
                "crd_sha256": hashlib.sha256(raw).hexdigest(),
            }
        )
    return entries


def main(argv: list[str]) -> int:
    if not argv:
        raise SystemExit(__doc__)
    entries = [e for path in argv for e in extract(Path(path))]
    print(json.dumps(entries, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
