"""File paths inside configs, read relative to the yaml file that names them.

Detectron2 reads ``_BASE_`` relative to the yaml that names it; nst_det reads every file-path key
(``MODEL.WEIGHTS``, ``DISTILL.TEACHER.CONFIG``, ...) the same way, so a command works from any
working directory. A relative path set in a yaml is looked for, in order, next to that yaml, in the
current directory and in the repository root; one given on the command line (``KEY VALUE``) in the
current directory and the repository root. The first that exists replaces the value by its absolute
path. When none exists the value becomes the first candidate's absolute path (so it stays tied to
its yaml), and :func:`missing_path_message` names the value as written and every place tried, for
the error raised where the file is needed (a file that is not needed is no error). Paths inside
the entries of a list-valued key (``DATASETS.COCO_CUSTOM``: ``[NAME, JSON_FILE, IMAGE_ROOT]``, ...)
are read the same way, entry by entry.
"""
import os
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import yaml

__all__ = ["REPO_ROOT", "resolve_config_paths", "missing_path_message", "tried_paths", "yaml_chain",
           "local_path", "read_config_yaml", "flat_keys", "check_config_stage", "ConfigFileError",
           "WrongStageConfigError", "STAGE_TOOLS"]

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_BASE_KEY = "_BASE_"
# (key, first candidate) -> (the value as written, every candidate), for the error messages
_TRIED: Dict[Tuple[str, str], Tuple[str, List[str]]] = {}


class ConfigFileError(ValueError):
    """A yaml config file that cannot be read as meant: empty, not a mapping, not valid yaml, a key
    given twice in one mapping, a ``_BASE_`` that is missing or loops, or the other stage's."""


class WrongStageConfigError(ConfigFileError, KeyError):
    """The other stage's config: a KeyError too, as the merge's "Non-existent config key" that it
    replaces (a caller that tries both stages catches it there)."""

    def __str__(self):  # KeyError's would quote the message
        return str(self.args[0]) if self.args else ""


def _mark(mark) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "?"


def _check_unique_keys(node, config_file: str, prefix: str = "") -> None:
    """ConfigFileError naming the file, the (dotted) key and both lines when a mapping of the
    composed yaml ``node`` gives a key twice: yaml keeps the last and drops the first silently."""
    if isinstance(node, yaml.MappingNode):
        seen = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # "<<: *anchor" may repeat
                _check_unique_keys(value_node, config_file, prefix)
                continue
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else repr(key_node.value)
            dotted = f"{prefix}{key}"
            if key in seen:
                raise ConfigFileError(
                    f"config file '{config_file}': key {dotted} is given twice in one mapping "
                    f"(line {seen[key].line + 1} and line {key_node.start_mark.line + 1}); yaml "
                    f"would keep the second and drop the first silently: write it once")
            seen[key] = key_node.start_mark
            _check_unique_keys(value_node, config_file, dotted + ".")
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _check_unique_keys(item, config_file, prefix)


def read_config_yaml(config_file: str) -> dict:
    """The raw mapping of one yaml config file, read as Detectron2 reads it (safe yaml, or, for
    python tags such as the model zoo's ``!!python/object/apply:eval`` anchor sizes, the unsafe
    loader that Detectron2 falls back to), after checks that name the file: not valid yaml (with
    the line and column), empty or not a mapping, a key given twice in one mapping."""
    with open(config_file) as f:
        text = f.read()
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)  # structure only: any tag is fine
        if node is not None:
            _check_unique_keys(node, config_file)
        try:
            raw = yaml.safe_load(text)
        except yaml.constructor.ConstructorError:
            raw = yaml.unsafe_load(text)
    except yaml.MarkedYAMLError as e:
        context = f" ({e.context} at {_mark(e.context_mark)})" if e.context else ""
        raise ConfigFileError(f"config file '{config_file}' is not valid yaml: "
                              f"{_mark(e.problem_mark)}: {e.problem}{context}") from e
    except yaml.YAMLError as e:
        raise ConfigFileError(f"config file '{config_file}' is not valid yaml: {e}") from e
    if raw is None:
        raise ConfigFileError(f"config file '{config_file}' is empty: a config is a yaml "
                              f"mapping of keys (at least _BASE_: FILE)")
    if not isinstance(raw, dict):
        raise ConfigFileError(f"config file '{config_file}' holds a yaml {type(raw).__name__}, "
                              f"not a mapping of keys")
    return raw


def yaml_chain(config_file: str, _seen: Tuple[str, ...] = ()) -> List[Tuple[str, dict]]:
    """[(file, its raw mapping)] from the deepest ``_BASE_`` to ``config_file``, in merge order;
    each file read by :func:`read_config_yaml` (its errors name the file). A ``_BASE_`` that does
    not exist, or a chain that loops, is a ConfigFileError naming the files."""
    real = os.path.realpath(config_file)
    if real in _seen:
        files = list(_seen[_seen.index(real):]) + [real]
        raise ConfigFileError("_BASE_ chain of config files loops: " + " -> ".join(files))
    raw = read_config_yaml(config_file)
    chain = []
    base = raw.get(_BASE_KEY)
    if base:
        base = os.path.expanduser(base)
        if not os.path.isabs(base) and "://" not in base:
            base = os.path.join(os.path.dirname(config_file), base)
        if "://" not in base and not os.path.isfile(base):
            raise ConfigFileError(f"config file '{config_file}': its _BASE_ '{raw[_BASE_KEY]}' "
                                  f"does not exist (looked for {os.path.abspath(base)})")
        chain.extend(yaml_chain(base, _seen + (real,)))
    chain.append((config_file, raw))
    return chain


def flat_keys(mapping, prefix: str = ""):
    """Dotted keys of the leaves (and empty groups) of a yaml mapping, ``_BASE_`` left out."""
    for name, value in (mapping or {}).items():
        if not prefix and name == _BASE_KEY:
            continue
        key = f"{prefix}{name}"
        if isinstance(value, dict) and value:
            yield from flat_keys(value, key + ".")
        else:
            yield key


def _has_key(cfg, dotted_key: str) -> bool:
    node = cfg
    for part in dotted_key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


# The tool of each stage, for the messages of check_config_stage.
STAGE_TOOLS = {"detection": "tools/train_net.py", "classification": "tools/train_cls.py"}


def check_config_stage(chain: List[Tuple[str, dict]], stage: str, defaults,
                       other_stage: str, other_defaults: Callable[[], object]) -> None:
    """ConfigFileError naming the files, the keys and the tool they belong to when the yaml files
    of ``chain`` set keys that this ``stage``'s config (``defaults``, a CfgNode) lacks but the
    ``other_stage``'s (``other_defaults()``, built only then) has: the wrong stage's config, which
    the merge would refuse with a bare "Non-existent config key"."""
    unknown = [(key, file) for file, raw in chain for key in flat_keys(raw)
               if not _has_key(defaults, key)]
    if not unknown:
        return
    other = other_defaults()
    theirs = [(key, file) for key, file in unknown if _has_key(other, key)]
    if not theirs:
        return  # a typo, or a key of neither stage: the merge names it
    ours = [key for file, raw in chain for key in flat_keys(raw)
            if _has_key(defaults, key) and not _has_key(other, key)]
    files = list(dict.fromkeys(file for _, file in theirs))
    keys = list(dict.fromkeys(key for key, _ in theirs))
    shown = ", ".join(keys[:6]) + (f", ... ({len(keys) - 6} more)" if len(keys) > 6 else "")
    tool, other_tool = STAGE_TOOLS[stage], STAGE_TOOLS[other_stage]
    given = chain[-1][0]
    where = "" if files == [given] else f" (set in {', '.join(files)})"
    if not ours:
        raise WrongStageConfigError(
            f"config file '{given}' is a {other_stage} config: it sets {shown}{where}, keys of "
            f"{other_tool} only. Run it with {other_tool}; {tool} reads {stage} configs")
    raise WrongStageConfigError(
        f"config file '{given}' sets keys of the {other_stage} stage ({other_tool}): "
        f"{shown}{where}; "
        f"{tool} reads {stage} configs, which have no such keys")


def _lookup(mapping: dict, dotted_key: str):
    node = mapping
    for part in dotted_key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _set(cfg, dotted_key: str, value) -> None:
    *parents, last = dotted_key.split(".")
    node = cfg
    for part in parents:
        node = node[part]
    node[last] = value


def _get(cfg, dotted_key: str):
    node = cfg
    for part in dotted_key.split("."):
        node = node[part]
    return node


def _needs_resolving(value) -> bool:
    return (isinstance(value, str) and value != "" and not os.path.isabs(value)
            and "://" not in value)


def _resolve(label: str, key: str, value: str, chain, from_command_line) -> str:
    """The absolute path of the first candidate of ``value`` (of ``key``; ``label`` in messages)
    that exists, else the first candidate, its places tried kept for :func:`missing_path_message`."""
    value = os.path.expanduser(value)
    candidates = []
    if key not in from_command_line:
        for file, raw in reversed(chain):  # the last yaml of the merge order that sets it
            if _lookup(raw, key) is not None:
                candidates.append(os.path.join(os.path.dirname(os.path.abspath(file)), value))
                break
    candidates += [os.path.join(os.getcwd(), value), os.path.join(REPO_ROOT, value)]
    candidates = list(dict.fromkeys(os.path.normpath(c) for c in candidates))
    found = next((c for c in candidates if os.path.exists(c)), None)
    if found is None:
        _TRIED[(label, candidates[0])] = (value, candidates)
    return found or candidates[0]


def resolve_config_paths(cfg, config_file: str, opts: Optional[Sequence[str]],
                         keys: Sequence[str],
                         entry_keys: Optional[Mapping[str, Sequence[int]]] = None) -> None:
    """Replace each relative path of ``keys`` in ``cfg`` (merged from ``config_file`` and
    ``opts``, not frozen) by the absolute path of the first candidate that exists.

    ``entry_keys`` ``{KEY: positions}``: keys whose value is a list of entries (lists), each
    with a path at those positions (``DATASETS.COCO_CUSTOM``: ``[NAME, JSON_FILE, IMAGE_ROOT]``
    -> ``(1, 2)``), resolved the same way and named ``KEY[i]`` (entry ``i``) in messages. An
    entry that is not a list, or too short, is left as it is for its own check to name."""
    chain = yaml_chain(config_file) if config_file else []
    from_command_line = set(list(opts or [])[0::2])
    for key in keys:
        value = _get(cfg, key)
        if _needs_resolving(value):
            _set(cfg, key, _resolve(key, key, value, chain, from_command_line))
    for key, positions in (entry_keys or {}).items():
        entries = []
        for i, entry in enumerate(_get(cfg, key)):
            if isinstance(entry, (list, tuple)):
                entry = list(entry)
                for p in positions:
                    if p < len(entry) and _needs_resolving(entry[p]):
                        entry[p] = _resolve(f"{key}[{i}]", key, entry[p], chain,
                                            from_command_line)
            entries.append(entry)
        _set(cfg, key, entries)


def tried_paths(key: str, value: str) -> List[str]:
    """The places :func:`resolve_config_paths` looked for the file now at ``value`` of ``key``
    (``KEY[i]`` for entry ``i`` of an entry key; empty if it did not resolve that value)."""
    return list(_TRIED.get((key, value), ("", []))[1])


def missing_path_message(key: str, value: str, what: str = "file") -> str:
    """``"<what> '<value as written>' (<key>) does not exist; tried: ..."`` for an error."""
    written, tried = _TRIED.get((key, value), (value, [os.path.abspath(value)]))
    return f"{what} '{written}' ({key}) does not exist; tried: {', '.join(tried)}"


def local_path(value: str) -> str:
    """A relative path of a LazyConfig (whose paths are not rewritten as a yaml's are) as it
    stands in the current directory or, failing that, in the repository root; absolute paths,
    URLs, ``zoo://`` names and paths found nowhere unchanged."""
    if not value or os.path.isabs(value) or "://" in value or os.path.exists(value):
        return value
    in_repo = os.path.join(REPO_ROOT, value)
    return in_repo if os.path.exists(in_repo) else value
