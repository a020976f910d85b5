"""Load and validate the workflow configuration.

The Snakefile calls :func:`validate_config` before any rule is defined, so a typo or a wrong type
fails at once with a message that names the offending key, instead of failing deep inside a job
hours later. Defaults from the JSON schema are filled in place, so scripts can rely on every key.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import ValidationError

from r2i.packagedata import schema_path

REPO_ROOT = Path(__file__).resolve().parents[2]
# Package data (r2i/data/schema/), so a wheel or an image that copies workflow/ only has it.
SCHEMA_PATH = schema_path("config")


class ConfigError(ValueError):
    """The configuration is invalid; the message lists every problem with its key path."""


def _extend_with_defaults(validator_class: type) -> type:
    """Return a validator class that also fills ``default`` values while validating."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):  # type: ignore[no-untyped-def]
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if isinstance(subschema, dict) and "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return validators.extend(validator_class, {"properties": set_defaults})


_DefaultFillingValidator = _extend_with_defaults(Draft202012Validator)


# libyaml's safe loader when PyYAML has it (the wheels do): the schema is read at every Snakemake
# start, and the pure-Python loader takes ~0.15 s of it, the C one ~0.02 s. Same documents.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_schema(path: str | Path = SCHEMA_PATH) -> dict[str, Any]:
    """The main schema plus the top-level sections of ``<name>.schema.yaml`` fragments beside it.

    Each stage family (training, evaluation, ...) keeps its keys in its own fragment file with a
    top-level ``properties`` mapping (and optional ``$defs``); they are merged here.
    """
    path = Path(path)
    with open(path, encoding="utf-8") as fh:
        schema = yaml.load(fh, Loader=_YAML_LOADER)
    for frag_path in sorted(path.parent.glob("*.schema.yaml")):
        if frag_path.resolve() == path.resolve():
            continue
        with open(frag_path, encoding="utf-8") as fh:
            frag = yaml.load(fh, Loader=_YAML_LOADER) or {}
        for key in ("properties", "$defs"):
            clash = set(frag.get(key, {})) & set(schema.get(key, {}))
            if clash:
                raise ValueError(f"{frag_path}: {key} {sorted(clash)} already defined")
            schema.setdefault(key, {}).update(frag.get(key, {}))
    return schema


def _key(path: Any) -> str:
    parts = [str(p) for p in path]
    return ".".join(parts) if parts else "<top level>"


_UNEXPECTED = re.compile(r"'([^']+)' (?:was|were) unexpected|\(('[^)]*') (?:was|were) unexpected\)")


def _describe(error: ValidationError) -> Iterator[str]:
    """Turn one jsonschema error into messages that name the full key path."""
    base = list(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = sorted((error.schema.get("properties") or {}).keys())
        extra = [k for k in error.instance if k not in (error.schema.get("properties") or {})]
        for key in extra:
            hint = f" (allowed keys: {', '.join(allowed)})" if allowed else ""
            yield f"config key '{_key([*base, key])}': unknown key{hint}"
        return
    if error.validator == "required":
        yield f"config key '{_key(base)}': {error.message}"
        return
    if error.validator == "oneOf" and isinstance(error.instance, dict):
        yield (
            f"config key '{_key(base)}': set exactly one of 'base_url' (a running server) or "
            f"'launch' (a command the job starts)"
        )
        return
    if error.context:
        # e.g. a $ref'd sub-schema failed: report the most specific causes.
        for sub in sorted(error.context, key=lambda e: len(list(e.absolute_path)), reverse=True)[:3]:
            yield from _describe(sub)
        return
    yield f"config key '{_key(base)}': {error.message}"


def _semantic_errors(config: Mapping[str, Any]) -> Iterator[str]:
    endpoints = config.get("endpoints") or {}
    for role, spec in (config.get("models") or {}).items():
        ep = spec.get("endpoint")
        if ep not in endpoints:
            yield (
                f"config key 'models.{role}.endpoint': endpoint '{ep}' is not defined under "
                f"'endpoints' (defined: {', '.join(sorted(endpoints)) or 'none'})"
            )
    for name, spec in endpoints.items():
        launch = spec.get("launch")
        if launch is not None and "{port}" not in launch:
            yield f"config key 'endpoints.{name}.launch': the command must contain '{{port}}'"
        env = spec.get("api_key_env")
        if env is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", env):
            yield (
                f"config key 'endpoints.{name}.api_key_env': must be the NAME of an environment "
                f"variable (letters, digits, underscore), not a key"
            )
    seg = config.get("segmenter") or {}
    if seg.get("backend") == "sam3" and not (seg.get("sam3") or {}).get("checkpoint"):
        yield "config key 'segmenter.sam3.checkpoint': required when segmenter.backend is 'sam3'"
    yield from _contradictions(config)


def _get(config: Mapping[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _contradictions(config: Mapping[str, Any]) -> Iterator[str]:
    """Pairs of settings that are each valid but cannot hold together; both keys are named.

    Each would otherwise surface only deep inside a job (or never: an empty result, a filter
    that silently does nothing), after the DAG has been planned and GPUs allocated.
    """

    def pair(low: str, high: str, why: str, *, strict: bool = True) -> Iterator[str]:
        lo, hi = _get(config, low), _get(config, high)
        if isinstance(lo, int | float) and isinstance(hi, int | float) and (
            lo > hi if strict else lo >= hi
        ):
            yield (f"config keys '{low}' ({lo}) and '{high}' ({hi}) contradict each other: "
                   f"{why}")

    yield from pair("synthesis.objects.min_objects", "synthesis.objects.max_objects",
                    "an image needs more objects than the teacher may list, so none yields any")
    yield from pair("synthesis.difficulty.drop_if_correct_at_least", "synthesis.difficulty.samples",
                    "the student cannot be right more often than it is sampled, so the "
                    "difficulty filter would never drop anything")
    for name in config.get("endpoints") or {}:
        yield from pair(f"endpoints.{name}.backoff_base_s", f"endpoints.{name}.backoff_max_s",
                        "the first retry delay is above the cap on all retry delays")
    toy = config.get("toy_world") or {}
    if toy.get("enabled"):
        yield from pair("manifest.min_side", "toy_world.short_side",
                        "every toy-world image has short_side pixels on its short side and the "
                        "manifest keeps only images whose sides are all above min_side, so it "
                        "would drop them all", strict=False)
    train = config.get("train") or {}
    if train.get("train_batch_size") and train.get("ppo_mini_batch_size"):
        yield from pair("train.ppo_mini_batch_size", "train.train_batch_size",
                        "an actor update cannot use more prompts than a rollout step has")
    yield from pair("train.min_pixels", "train.max_pixels",
                    "the image pixel range is empty")
    yield from pair("train.tensor_parallel_size", "train.gpus_per_node",
                    "a rollout engine cannot span more GPUs than a node has")


def validate_config(config: dict[str, Any], schema: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Validate ``config`` in place, fill defaults, and raise :class:`ConfigError` on problems."""
    schema = dict(schema) if schema is not None else load_schema()
    validator = _DefaultFillingValidator(schema)
    messages: list[str] = []
    for error in sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path))):
        messages.extend(_describe(error))
    if not messages:
        messages.extend(_semantic_errors(config))
    if messages:
        unique = list(dict.fromkeys(messages))
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(unique))
    return config


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file and validate it (used by tests and the CLI)."""
    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level of a config file must be a mapping")
    return validate_config(data)
