"""Validates FHIR Bundles with the fhir.resources R4B models (pydantic).

Usage: validate.py FILE...  Prints "ok FILE" or "invalid FILE: reason" per file;
exits 1 if any file is invalid. Used by tests/integration/fhir_models.rs.
"""

import sys

from fhir.resources.R4B.bundle import Bundle


def main(paths):
    bad = 0
    for path in paths:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        try:
            bundle = Bundle.model_validate_json(text)
        except Exception as e:  # pydantic.ValidationError and friends
            bad += 1
            print(f"invalid {path}: {e}")
            continue
        kinds = sorted({e.resource.get_resource_type() for e in bundle.entry or []})
        print(f"ok {path} {len(bundle.entry or [])} entries {','.join(kinds)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
