"""config/README.md documents every key of the schema."""

from __future__ import annotations

from r2i.config import load_schema

from .conftest import REPO


def _keys(schema: dict, root: dict, prefix: str = "") -> list[str]:
    out = []
    for name, sub in (schema.get("properties") or {}).items():
        key = f"{prefix}{name}"
        if "$ref" in sub or "properties" not in sub:
            out.append(key)  # a leaf, or a mapping documented as a whole
        else:
            out.extend(_keys(sub, root, key + "."))
    return out


def test_every_schema_key_is_documented():
    schema = load_schema()
    doc = (REPO / "config" / "README.md").read_text()
    keys = _keys(schema, schema)
    for ref, prefix in (("endpoint", "endpoints.<name>."), ("model", "models.<role>.")):
        keys += [prefix + k for k in schema["$defs"][ref]["properties"]]
    missing = [k for k in keys if f"`{k}`" not in doc]
    assert not missing, f"undocumented config keys: {missing}"
