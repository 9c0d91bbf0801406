"""Reading the config file: UTF-8 text, YAML through a strict loader that refuses
duplicate keys, then parse_config with relative paths anchored at the file's folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from agent.config.schema import AgentConfig, ConfigError
from agent.config.validation import parse_config


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys, which PyYAML would silently let the last win."""


def _construct_strict_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False):
    seen = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # keys merged in with << may legitimately be overridden
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, (str, int, float, bool)) and key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key '{key}'", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                              _construct_strict_mapping)


def load_config(path: str | os.PathLike[str]) -> AgentConfig:
    """Read and validate the YAML file; relative paths in it are relative to its folder."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError([f"{path}: cannot read config: {e.strerror}"]) from e
    except UnicodeDecodeError as e:
        raise ConfigError([f"{path}: not UTF-8 text"]) from e
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as e:
        line = e.problem_mark.line + 1 if e.problem_mark else "?"
        raise ConfigError([f"{path}:{line}: YAML syntax error: {e.problem or e.context}"]) from e
    except yaml.YAMLError as e:
        raise ConfigError([f"{path}: YAML error: {e}"]) from e
    return parse_config(data, base_dir=path.absolute().parent)
