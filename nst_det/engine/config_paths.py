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
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import yaml

__all__ = ["REPO_ROOT", "resolve_config_paths", "missing_path_message", "tried_paths", "yaml_chain",
           "local_path"]

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_BASE_KEY = "_BASE_"
# (key, first candidate) -> (the value as written, every candidate), for the error messages
_TRIED: Dict[Tuple[str, str], Tuple[str, List[str]]] = {}


def yaml_chain(config_file: str) -> List[Tuple[str, dict]]:
    """[(file, its raw mapping)] from the deepest ``_BASE_`` to ``config_file``, in merge order;
    each file read as Detectron2 reads it (safe yaml, or, for python tags such as the model zoo's
    ``!!python/object/apply:eval`` anchor sizes, the unsafe loader that Detectron2 falls back to)."""
    with open(config_file) as f:
        text = f.read()
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.constructor.ConstructorError:
        raw = yaml.unsafe_load(text) or {}
    chain = []
    base = raw.get(_BASE_KEY)
    if base:
        base = os.path.expanduser(base)
        if not os.path.isabs(base) and "://" not in base:
            base = os.path.join(os.path.dirname(config_file), base)
        chain.extend(yaml_chain(base))
    chain.append((config_file, raw))
    return chain


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
