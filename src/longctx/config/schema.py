"""The config schema (``schema.yaml`` beside this file): every key with its type, default and
description. ``validate_schema`` fills the defaults in and names the offending key of the first
error, e.g. ``config key 'variants[1].scale': ...``."""

from __future__ import annotations

import copy
from importlib import resources as package_files
from pathlib import Path

import jsonschema
import yaml


class ConfigError(ValueError):
    """The config is wrong; the message names the key."""


def schema() -> dict:
    return yaml.safe_load(package_files.files("longctx.config").joinpath("schema.yaml").read_text())


def _with_defaults(validator_class):
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_Validator = _with_defaults(jsonschema.Draft202012Validator)


def _key(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top level>"


def _describe(error: jsonschema.ValidationError) -> str:
    key = _key(error.absolute_path)
    if "propertyNames" in error.schema_path:  # a name of ours (corpus, split) that is not a plain word
        return (f"config key '{key}': the name {error.instance!r} is not allowed; names are letters, digits "
                f"and {'_' if key.endswith('splits') else '_ . -'} ({error.schema['pattern']})")
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        prefix = f"{key}." if error.absolute_path else ""
        return f"config key '{prefix}{extra[0]}': unknown key (allowed here: {', '.join(sorted(error.schema.get('properties', {})))})"
    if error.validator == "required":
        missing = error.message.split("'")[1]
        prefix = f"{key}." if error.absolute_path else ""
        return f"config key '{prefix}{missing}': required but missing"
    return f"config key '{key}': {error.message}"


def validate_schema(config: dict) -> dict:
    """Fill defaults into ``config`` (in place) and check it against the schema; returns it."""
    if not isinstance(config, dict):
        raise ConfigError("config: the top level must be a mapping of keys to values")
    errors = sorted(_Validator(schema()).iter_errors(config), key=lambda e: (len(e.absolute_path), str(e.absolute_path)))
    if errors:
        raise ConfigError(_describe(errors[0]))
    return config


def read_config(path: str | Path, overrides: dict | None = None) -> dict:
    """The YAML config at ``path`` (with ``overrides`` merged in), not yet validated."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    return deep_merge(config, overrides) if overrides else config


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in override.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out
