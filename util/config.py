"""Experiment configuration: sectioned YAML files flattened into one namespace.

The original SCCAN/BAM code loads a YAML file whose top-level sections (``Data``, ``Train``,
``Method``, ``Test_Finetune``, ``Distributed``) are flattened into one ``CfgNode`` and lets the
command line override single values with ``--opts key value ...``. This module keeps that
behaviour (the shipped configs and command lines work unchanged) but is stricter and safe:

* every key must be in the schema (util/config_schema.py), in the file and on the command
  line; an unknown key is an error with the closest known names as suggestions, so a typo
  cannot silently train with the default value;
* a key the file leaves out gets the schema default, so code reads ``cfg.key`` and the
  defaults live in one table (``save_config`` writes the resolved values);
* every value must have the schema type (an int is accepted for a float; None only for an
  optional key); a file value of another type is an error naming the file and the key;
* values given on the command line are parsed with ``ast.literal_eval`` (never ``eval``) and
  fall back to the raw string when they are not a Python literal, like the original;
* a legacy key (the original's, read by no code here) set to a non-default value warns once;
* a key that appears in two sections is an error, because flattening would otherwise let one
  silently shadow the other;
* a key repeated inside one YAML mapping is an error (PyYAML would keep the last one silently),
  and so is a key given twice in ``--opts``;
* every value must lie in the range the network and the pipeline can take (``RANGES`` and
  ``RELATIONS`` in util/config_schema.py: sizes, counts, learning rates, ...), checked here so
  that every script refuses a bad value in one line before it writes anything;
* a file the YAML parser rejects, or that is not UTF-8, is one line naming the file, the line
  and the column.
"""

from __future__ import annotations

import argparse
import ast
import copy
import difflib
import os
import warnings
from typing import Any, Iterable, Iterator, Mapping, Sequence

import yaml

from util.cli import add_debug_argument
from util.io import atomic_write_text, read_text
from util.config_schema import SCHEMA, check_type, legacy_message, range_problems

__all__ = [
    "Config",
    "ConfigError",
    "LegacyKeyWarning",
    "RUNTIME_SECTION",
    "apply_overrides",
    "check_ranges",
    "config_argparser",
    "config_from_arguments",
    "load_config",
    "merge_opts",
    "save_config",
]

# Section that receives keys which were added at run time (not read from a file), so that a
# saved configuration can be loaded again with the same sectioned layout.
RUNTIME_SECTION = "Runtime"


class ConfigError(ValueError):  # a ValueError, so the scripts print it as 'error: ...'
    """Raised for any malformed configuration file or invalid override."""


class LegacyKeyWarning(UserWarning):
    """A legacy key (read by no code here) was set to another value than its default."""


_warned_legacy_keys: set[str] = set()


def _warn_if_legacy(key: str, value: Any, where: str) -> None:
    """Warn once per key and process when a legacy key is given a non-default value."""
    message = legacy_message(key, value)
    if message and key not in _warned_legacy_keys:
        _warned_legacy_keys.add(key)
        # Reported at the file (or --opts) that set the key, not at a line of this module.
        warnings.warn_explicit(message, LegacyKeyWarning, filename=where, lineno=0)


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that rejects a key repeated inside one mapping.

    PyYAML keeps the last of two equal keys without a word; in a config file that is almost
    always an editing mistake, and it would change an experiment silently.
    """


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False):
    loader.flatten_mapping(node)
    seen_lines: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        line = key_node.start_mark.line + 1
        if key in seen_lines:
            raise ConfigError(
                f"duplicate key {key!r} in one mapping (lines {seen_lines[key]} and {line})"
            )
        seen_lines[key] = line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping
)


class Config:
    """A flat, attribute- and item-accessible view of a sectioned configuration.

    ``config.base_lr`` and ``config['base_lr']`` are the same value. The section each key came
    from is remembered (``section_of``) so that ``save_config`` can write the file back in its
    original layout. New keys may be set at run time (the training script records derived values
    such as the distributed rank); they belong to the ``Runtime`` section.

    The object pickles and copies (``copy.copy``, ``copy.deepcopy``, ``config.copy()``) like a
    plain object, and ``to_dict()`` gives a plain ``dict`` for storing inside checkpoints.
    """

    def __init__(
        self,
        values: Mapping[str, Any] | None = None,
        sections: Mapping[str, str] | None = None,
        source: str | None = None,
    ) -> None:
        # Instance state lives in __dict__ under underscore names; configuration keys live in
        # _values. object.__setattr__ bypasses our own __setattr__, which writes config keys.
        object.__setattr__(self, "_values", {})
        object.__setattr__(self, "_sections", {})
        object.__setattr__(self, "_source", source)
        for key, value in (values or {}).items():
            section = (sections or {}).get(key, RUNTIME_SECTION)
            self._set(key, value, section)

    # ----------------------------------------------------------------------------- internals
    def _set(self, key: str, value: Any, section: str) -> None:
        if not isinstance(key, str) or not key:
            raise ConfigError(f"configuration keys must be non-empty strings, got {key!r}")
        if key.startswith("_") or hasattr(type(self), key):
            # A key named like a method ('copy', 'keys', ...) would be shadowed by the method
            # under attribute access; a leading underscore would clash with the private state.
            raise ConfigError(f"{key!r} is reserved and cannot be used as a configuration key")
        self._values[key] = value
        self._sections.setdefault(key, section)

    # ----------------------------------------------------------------------- attribute access
    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails. Read _values through __dict__ so that a
        # half-built object (during unpickling or copying) raises AttributeError instead of
        # recursing forever.
        values = self.__dict__.get("_values")
        if values is not None and name in values:
            return values[name]
        raise AttributeError(_unknown_key_message(name, values or {}))

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._values:
            self._values[name] = value
        else:
            self._set(name, value, RUNTIME_SECTION)

    def __delattr__(self, name: str) -> None:
        if name not in self._values:
            raise AttributeError(_unknown_key_message(name, self._values))
        del self._values[name]
        del self._sections[name]

    # ---------------------------------------------------------------------------- item access
    def __getitem__(self, key: str) -> Any:
        if key not in self._values:
            raise KeyError(_unknown_key_message(key, self._values))
        return self._values[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.__setattr__(key, value)

    def __delitem__(self, key: str) -> None:
        if key not in self._values:
            raise KeyError(_unknown_key_message(key, self._values))
        self.__delattr__(key)

    def __contains__(self, key: object) -> bool:
        return key in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Config):
            return self._values == other._values
        return NotImplemented

    def __repr__(self) -> str:
        lines = [f"Config({self._source!r})" if self._source else "Config()"]
        for section, keys in self.sections().items():
            lines.append(f"  {section}:")
            lines.extend(f"    {key}: {self._values[key]!r}" for key in keys)
        return "\n".join(lines)

    # ------------------------------------------------------------------------- mapping helpers
    def get(self, key: str, default: Any = None) -> Any:
        """Value of ``key``, or ``default`` when the configuration has no such key."""
        return self._values.get(key, default)

    def keys(self):
        return self._values.keys()

    def values(self):
        return self._values.values()

    def items(self):
        return self._values.items()

    def to_dict(self) -> dict[str, Any]:
        """A deep-copied plain ``dict`` of every key (what checkpoints store)."""
        return copy.deepcopy(self._values)

    def copy(self) -> "Config":
        """An independent deep copy (nested lists and dicts are not shared)."""
        return copy.deepcopy(self)

    def section_of(self, key: str) -> str:
        """Name of the section ``key`` was read from (``Runtime`` for keys set at run time)."""
        if key not in self._sections:
            raise KeyError(_unknown_key_message(key, self._values))
        return self._sections[key]

    def sections(self) -> dict[str, list[str]]:
        """Section name -> its keys, in file order (``Runtime`` last, when present)."""
        grouped: dict[str, list[str]] = {}
        for key in self._values:
            grouped.setdefault(self._sections[key], []).append(key)
        if RUNTIME_SECTION in grouped:
            grouped[RUNTIME_SECTION] = grouped.pop(RUNTIME_SECTION)
        return grouped

    @property
    def source(self) -> str | None:
        """Path of the file this configuration was loaded from, if any."""
        return self._source


# ------------------------------------------------------------------------------- error texts
def _close_matches(key: str, known: Iterable[str]) -> list[str]:
    """Known keys that look like ``key``; compared case-insensitively ('subepoch_val')."""
    known = list(known)
    by_lower: dict[str, str] = {}
    for name in known:
        by_lower.setdefault(name.lower(), name)
    matches = difflib.get_close_matches(key.lower(), list(by_lower), n=3, cutoff=0.6)
    return [by_lower[match] for match in matches]


def _unknown_key_message(key: str, known: Iterable[str]) -> str:
    suggestions = _close_matches(str(key), known)
    if suggestions:
        return f"unknown configuration key {key!r}; did you mean {', '.join(map(repr, suggestions))}?"
    return f"unknown configuration key {key!r} (no similar key exists)"


# ----------------------------------------------------------------------------------- loading
def _mark(mark) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}"


def _yaml_error_message(path: str, text: str, error: yaml.YAMLError) -> str:
    """One line for a file the YAML parser rejects: where, what, and what it was parsing."""
    if isinstance(error, yaml.MarkedYAMLError) and (error.problem_mark or error.context_mark):
        mark = error.problem_mark or error.context_mark
        message = f"{path}, {_mark(mark)}: invalid YAML: {error.problem or error.context}"
        context_mark = error.context_mark
        if error.problem and error.context:
            started = ""
            if context_mark and (context_mark.line, context_mark.column) != (mark.line, mark.column):
                started = f" that starts at {_mark(context_mark)}"
            message += f" ({error.context}{started})"
        lines = text.splitlines()
        if mark.line < len(lines) and "\t" in lines[mark.line]:
            message += "; YAML indents with spaces, not tabs"
        return message
    if isinstance(error, yaml.reader.ReaderError):  # a control character
        line = text.count("\n", 0, error.position) + 1
        return f"{path}, line {line}: invalid YAML: the control character U+{error.character:04X} is not allowed"
    return f"{path}: invalid YAML: {error}"


def _read_document(path: str) -> dict:
    """The YAML file as a mapping of sections (a repeated key is an error)."""
    if os.path.isdir(path):
        raise ConfigError(f"{path} is a folder, not a configuration file (config/ holds the YAML "
                          f"files, e.g. config/pascal/pascal_split0_resnet50.yaml)")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"configuration file not found: {path}")
    text = read_text(path, "a configuration file")
    try:
        document = yaml.load(text, Loader=_UniqueKeyLoader)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    except yaml.YAMLError as error:
        raise ConfigError(_yaml_error_message(path, text, error)) from None
    if document is None:
        # Every key would take its default, which describes the original's PASCAL layout: a run
        # would start on data the user never named. An empty file is a mistake, not a config.
        raise ConfigError(f"{path} is empty (no sections, only comments or blank lines): a config "
                          f"names at least its data set, e.g. copy config/toy/toy_split0_resnet50.yaml")
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return document


def _read_sections(path: str, document: dict) -> tuple[dict[str, Any], dict[str, str]]:
    """Flatten the sections into ``(values, section of each key)``, checking every key against
    the schema; all unknown or mistyped keys are reported together."""
    values: dict[str, Any] = {}
    sections: dict[str, str] = {}
    problems: list[str] = []
    for section, content in document.items():
        if content is None:  # an empty section, e.g. "Distributed:" with nothing below it
            continue
        if not isinstance(content, dict):
            # Most likely a key that lost its indentation; refusing it beats guessing.
            raise ConfigError(
                f"{path}: top-level entry {section!r} is not a section (a mapping of keys); "
                f"got {content!r}"
            )
        for key, value in content.items():
            if key in values:
                raise ConfigError(
                    f"{path}: key {key!r} appears in both section {sections[key]!r} and "
                    f"section {section!r}; flattened sections must not share keys"
                )
            if key not in SCHEMA:
                problems.append(f"{path}: section {section!r}: {_unknown_key_message(key, SCHEMA)}")
                continue
            try:
                values[key] = check_type(key, value, convert=False)
            except TypeError as error:
                problems.append(f"{path}: key {key!r} (section {section!r}) {error}")
                continue
            sections[key] = str(section)
    if problems:
        raise ConfigError("\n".join(problems))
    return values, sections


def load_config(path: str | os.PathLike, opts: Sequence[Any] | None = None,
                opts_name: str = "--opts") -> Config:
    """Load a sectioned YAML file into a flat ``Config`` and apply ``--opts`` overrides.

    Every top-level key must name a section (a mapping, or empty). Keys of all sections share
    one namespace, so a key in two sections is an error that names both sections. Every key
    must be in the schema and have its type (all problems are reported together); the keys
    the file leaves out get their schema default in their schema section, and ``config_file``
    is the file's path unless the file sets it. File values are kept as written (an int stays
    an int where the schema has float). ``opts`` is the flat ``[key, value, key, value, ...]``
    list of ``--opts``; see ``apply_overrides`` for how the values are parsed and checked.
    ``opts_name``: the option that gave ``opts``, named in the messages (a tool may take two
    override lists, e.g. tools.toy_demo's ``--base-opts``).
    """
    path = os.fspath(path)
    values, sections = _read_sections(path, _read_document(path))
    for key, value in values.items():
        _warn_if_legacy(key, value, path)
    values.setdefault("config_file", path)
    for key, entry in SCHEMA.items():
        if key not in values:
            values[key] = copy.deepcopy(entry.default)
        sections.setdefault(key, entry.section)

    config = Config(values, sections, source=path)
    if opts:
        apply_overrides(config, opts, opts_name)  # also checks the ranges of the result
    else:
        check_ranges(config)
    return config


def _origin(config: Config, overridden: Iterable[str] = (), opts_name: str = "--opts"):
    """``origin(key)``: where ``key``'s value came from, for the range messages."""
    overridden = set(overridden)

    def origin(key: str) -> str:
        if key in overridden:
            return f" (from {opts_name})"
        return f" (file {config.source})" if config.source else ""
    return origin


def check_ranges(config: Config) -> Config:
    """``config`` if every value lies in the range the code can take (util/config_schema.py's
    ``RANGES`` and ``RELATIONS``), else a ConfigError with one line per value out of range:
    ``config key val_size: expected ..., got 9 (file X)``."""
    problems = range_problems(config, _origin(config))
    if problems:
        raise ConfigError("\n".join(problems))
    return config


def _parse_override_value(value: Any) -> Any:
    """Parse one ``--opts`` value like the original: a Python literal, else the raw string."""
    if not isinstance(value, str):
        return value  # already typed (programmatic use)
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        # Plain words such as a path or 'layer2' are not literals: keep the text as given.
        return value


def _override_pairs(opts: list, problems: list[str], opts_name: str = "--opts") -> list[tuple[Any, Any]]:
    """Split ``--opts`` items into (key, value) pairs: ``key value`` or ``key=value`` (the
    spelling of mmsegmentation's --cfg-options, which users type out of habit)."""
    pairs = []
    position = 0
    while position < len(opts):
        item = opts[position]
        if isinstance(item, str) and "=" in item and item.split("=", 1)[0].isidentifier():
            pairs.append(tuple(item.split("=", 1)))
            position += 1
        elif isinstance(item, str) and item.startswith("-"):
            pairs.append((item, None))  # a misplaced flag: reported by the caller
            position += 1
        elif position + 1 < len(opts):
            pairs.append((item, opts[position + 1]))
            position += 2
        else:
            problems.append(f"{opts_name}: key {item!r} has no value (keys and values must alternate)")
            position += 1
    return pairs


def merge_opts(*override_lists: Sequence[Any]) -> list:
    """One flat ``--opts`` list from several, e.g. the user's and then a tool's own settings: a
    key of a later list replaces that key of the earlier lists (``key=value`` items included).
    A key repeated within one list stays repeated, so that ``apply_overrides`` refuses it as it
    refuses a repeated key on the command line; lists it cannot split are simply concatenated
    (it then reports their problems)."""
    merged: list = []
    for opts in override_lists:
        problems: list[str] = []
        pairs = _override_pairs(list(opts), problems)
        if problems or any(not isinstance(key, str) or key.startswith("-") for key, _ in pairs):
            return [item for overrides in override_lists for item in overrides]
        replaced = {key for key, _ in pairs}
        merged = [pair for pair in merged if pair[0] not in replaced] + pairs
    return [item for pair in merged for item in pair]


def apply_overrides(config: Config, opts: Sequence[Any], opts_name: str = "--opts") -> Config:
    """Apply a flat ``[key, value, ...]`` override list to ``config`` in place and return it.

    Keys must be schema keys, each given once. Values are parsed with ``ast.literal_eval`` (raw
    string when that fails) and must have the schema type (an int is accepted for a float and
    stored as a float; None only for an optional key); ``key=value`` items work too. The
    resulting configuration must lie in the schema's ranges (``check_ranges``). All problems are
    collected and reported together: unknown keys (with close matches), repeated keys, wrong
    types, values out of range, and a trailing key without a value. Nothing is changed when any
    override is invalid. A legacy key set to a non-default value warns once. ``opts_name``: the
    option the list came from, named in the messages.
    """
    problems: list[str] = []
    pairs = _override_pairs(list(opts), problems, opts_name)

    updates: dict[str, Any] = {}
    given: dict[Any, Any] = {}
    for key, raw_value in pairs:
        if isinstance(key, str) and key.startswith("-"):
            problems.append(f"{opts_name}: {key!r} looks like a flag; flags go before {opts_name} "
                            f"(everything after {opts_name} is read as 'key value' overrides)")
            continue
        if not isinstance(key, str):
            problems.append(f"{opts_name}: keys must be strings, got {key!r}")
            continue
        if key in given:
            # The last one would win silently, as PyYAML would let it in a file (an error there).
            problems.append(f"{opts_name}: duplicate key {key!r} (given {given[key]!r} and then {raw_value!r}); "
                            f"give each key once")
            continue
        given[key] = raw_value
        if key not in SCHEMA:
            problems.append(f"{opts_name}: {_unknown_key_message(key, SCHEMA)}")
            continue
        try:
            updates[key] = check_type(key, _parse_override_value(raw_value), overrides=opts_name)
        except TypeError as error:
            problems.append(f"{opts_name} {key}: {error}")

    if not problems:
        problems = range_problems({**config, **updates}, _origin(config, updates, opts_name))
    if problems:
        raise ConfigError("\n".join(problems))
    for key, value in updates.items():
        _warn_if_legacy(key, value, opts_name)
        if key not in config:
            config._set(key, value, SCHEMA[key].section)
        config[key] = value
    return config


# ------------------------------------------------------------------------------------ saving
def _plain(value: Any) -> Any:
    """Convert ``value`` into something ``yaml.safe_dump`` writes and ``safe_load`` reads back.

    Tuples become lists; numpy/torch scalars become Python numbers; other objects that YAML
    cannot represent (paths, devices) are written as their string form, because a saved config
    is a record for humans and for reloading, not an object store.
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return _plain(value.item())  # numpy / torch 0-d scalars
    return str(value)


def save_config(config: Config | Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write the resolved configuration (overrides applied) as sectioned YAML.

    The layout follows the sections the values were read from, so ``load_config`` gives back
    an equal configuration. A plain mapping (e.g. the ``cfg`` dict stored in a checkpoint) is
    written under the ``Runtime`` section.
    """
    if not isinstance(config, Config):
        config = Config(dict(config))
    path = os.fspath(path)
    chunks = ["# Resolved configuration" + (f" (from {config.source})" if config.source else "")]
    for section, keys in config.sections().items():
        body = {key: _plain(config[key]) for key in keys}
        chunks.append(
            yaml.safe_dump({section: body}, sort_keys=False, default_flow_style=False,
                           allow_unicode=True).rstrip()
        )
    atomic_write_text(path, "\n\n".join(chunks) + "\n")


# ------------------------------------------------------------------------------ command line
def config_argparser(description: str = "SCCAN", prog: str | None = None,
                     default_config: str | None = None) -> argparse.ArgumentParser:
    """The command line shared by the scripts and the tools that read a config.

    ``--config PATH`` (required unless ``default_config``); ``--opts key value ...`` (everything
    after it, so it must come last); ``--debug``; ``--local_rank``/``--local-rank``, which
    ``torch.distributed.launch`` appends and which is accepted and recorded, but not used to pick
    the device (``LOCAL_RANK`` in the environment is the source the scripts should use).
    """
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", type=str, required=default_config is None, default=default_config,
                        help="path to a YAML config file" +
                             (f" (default {default_config})" if default_config else ""))
    parser.add_argument(
        "--local_rank", "--local-rank", dest="local_rank", type=int, default=None,
        help="set by torch.distributed.launch; recorded only",
    )
    add_debug_argument(parser)
    parser.add_argument(
        "--opts", default=[], nargs=argparse.REMAINDER,
        help="overrides as 'key value' (or key=value) pairs, e.g. --opts split 1 base_lr 0.01 "
             "(must come last: flags go before --opts)",
    )
    return parser


def config_from_arguments(arguments: argparse.Namespace) -> Config:
    """The loaded, overridden configuration of parsed ``config_argparser`` arguments.

    It records ``local_rank`` (the ``--local_rank`` value) unless the YAML or ``--opts`` set it;
    ``config_file`` is the ``--config`` path unless the YAML sets it (``load_config``).
    """
    config = load_config(arguments.config, arguments.opts)
    if config.local_rank is None:
        config.local_rank = arguments.local_rank
    return config
