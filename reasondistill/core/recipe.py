"""Recipes: one YAML file of settings per run, overridable from the command line.

The YAML file is a flat mapping of field names of the stage's dataclasses (``learning_rate: 1.0e-4``).
``--key value`` flags override it, parsed by transformers' ``HfArgumentParser`` as in TRL's ``TrlParser``;
every bool field also gets a ``--no_<key>`` flag. A key shared by two dataclasses sets both.

YAML is read with two YAML 1.2 rules instead of PyYAML's YAML 1.1 ones: ``1e-4`` is a float (not the
string "1e-4"), and only true/false are booleans (``yes``/``no``/``on``/``off`` stay strings).
"""

import argparse
import dataclasses
import difflib
import os
import re
import tempfile
import types
from collections.abc import Iterable, Sequence
from enum import Enum
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml
from transformers import HfArgumentParser

__all__ = ["RecipeError", "matches_saved_recipe", "parse_recipe", "save_resolved_recipe"]


class RecipeError(ValueError):
    """A recipe problem the user must fix; the message names the file, the key and the fix."""


class _RecipeLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 floats (``1e-4``) and booleans (true/false only); see the module docstring."""


_RecipeLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_RecipeLoader.add_implicit_resolver(  # PyYAML's float pattern needs a dot; this one adds 1e-4 and 5E+3.
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)

_UNSET = object()  # marks argparse destinations that the command line did not set


def _is_enum(hint: Any) -> bool:
    return isinstance(hint, type) and issubclass(hint, Enum)


def _describe(hint: Any) -> str:
    """Human-readable name of a type hint for error messages."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(arg) for arg in args)
    if _is_enum(hint):
        return "one of " + ", ".join(repr(member.value) for member in hint)
    if isinstance(hint, type) and origin is None:
        return "null" if hint is type(None) else hint.__name__
    return str(hint).replace("typing.", "")


_SCALARS = {  # YAML scalar checks: no 1/"yes" for bool, no bool for int, an int is fine for a float
    type(None): lambda v: v is None,
    bool: lambda v: type(v) is bool,
    int: lambda v: type(v) is int,
    float: lambda v: type(v) in (int, float),
    str: lambda v: isinstance(v, str),
}


def _conform(value: Any, hint: Any) -> Any:
    """Return ``value`` checked against ``hint`` (a list becomes a tuple for a tuple hint), else TypeError.

    Hints other than None/bool/int/float/str, Union, Literal, Enum, list/tuple/set and dict are accepted as
    given: the dataclass's own ``__post_init__`` checks those.
    """
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        if any(_is_enum(arg) for arg in args):  # `SchedulerType | str`: the str stands for the enum's values
            args = tuple(arg for arg in args if arg is not str)
        for arg in args:
            try:
                return _conform(value, arg)
            except TypeError:
                continue
        raise TypeError
    if origin in (list, tuple, set) or hint in (list, tuple, set):
        if not isinstance(value, list | tuple):
            raise TypeError
        if (origin or hint) is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise TypeError
            return tuple(_conform(item, arg) for item, arg in zip(value, args, strict=True))
        return (origin or hint)(_conform(item, args[0]) if args else item for item in value)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise TypeError
        key_hint, value_hint = args or (Any, Any)
        return {_conform(k, key_hint): _conform(v, value_hint) for k, v in value.items()}
    if origin is Literal or _is_enum(hint):
        choices = args if origin is Literal else (*hint, *(member.value for member in hint))
        fits = any(type(value) is type(choice) and value == choice for choice in choices)
    else:
        fits = _SCALARS.get(hint, lambda v: True)(value)
    if not fits:
        raise TypeError
    return value


def _checked(where: str, key: str, value: Any, hint: Any, source: str) -> Any:
    try:
        return _conform(value, hint)
    except TypeError:
        raise RecipeError(
            f"{where}: key '{key}' expects {_describe(hint)}, got {value!r} ({type(value).__name__}) "
            f"{source}; fix its value"
        ) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(f"{path}: recipe file not found; check the path (cwd is {Path.cwd()})") from None
    try:
        data = yaml.load(text, Loader=_RecipeLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or exc
        raise RecipeError(f"{where}: YAML syntax error: {problem}; fix the YAML at that line") from None
    if not isinstance(data, dict | None):
        raise RecipeError(
            f"{path}: the recipe must be a YAML mapping of `key: value` lines, not a list or text"
        )
    return data or {}


def _did_you_mean(name: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def parse_recipe(
    recipe_path: str | os.PathLike | None, dataclass_types: Sequence[type], cli_args: Sequence[str] = ()
) -> tuple:
    """Return one instance per dataclass type, filled from the YAML file then the CLI overrides.

    Args:
        recipe_path: YAML recipe (a flat mapping of field names); None means command line only.
        dataclass_types: the stage's settings dataclasses, e.g. ``(ModelArgs, DistillConfig)``.
        cli_args: ``--key value`` overrides, e.g. ``sys.argv[3:]``; ``--help`` prints them all and exits.

    Raises:
        RecipeError: unreadable YAML, unknown key or flag, wrong type, missing required field, or a
            ValueError from a dataclass's ``__post_init__``; the message names the file and the key.
    """
    where = str(recipe_path) if recipe_path is not None else "command line (no recipe file)"
    hints = {}  # field name -> type hint; a key shared by two dataclasses keeps the first hint
    for dtype in dataclass_types:
        type_hints = get_type_hints(dtype)  # field.type may be a string, or rewritten by HfArgumentParser
        for f in dataclasses.fields(dtype):
            if f.init:
                hints.setdefault(f.name, type_hints[f.name])

    values = {}
    recipe = _read_yaml(Path(recipe_path)) if recipe_path is not None else {}
    for key, value in recipe.items():
        if key not in hints:
            raise RecipeError(
                f"{where}: unknown key '{key}'{_did_you_mean(str(key), hints)}; "
                f"remove it or use a setting of {', '.join(d.__name__ for d in dataclass_types)}"
            )
        values[key] = _checked(where, key, value, hints[key], "in the recipe")

    # HfArgumentParser cannot register one flag twice ("resolve" keeps the last); abbreviations would let
    # a typo such as --learning set --learning_rate.
    parser = HfArgumentParser(
        dataclass_types, conflict_handler="resolve", allow_abbrev=False, exit_on_error=False
    )
    for action in parser._actions:
        action.required = False  # as TrlParser does for YAML-given keys; missing ones are reported below
        if isinstance(action.help, str):  # argparse %-formats help: a plain "95%" would break --help
            action.help = re.sub(r"%%|%\(|%", lambda m: "%%" if m.group() == "%" else m.group(), action.help)
        if action.dest in values:
            action.default = values[action.dest]  # so --help shows the recipe's value
    for name, hint in hints.items():
        if (hint is bool or hint == bool | None) and f"--no_{name}" not in parser._option_string_actions:
            parser.add_argument(f"--no_{name}", action="store_false", dest=name, help=argparse.SUPPRESS)
    try:
        namespace, unknown = parser.parse_known_args(
            list(cli_args), argparse.Namespace(**dict.fromkeys(hints, _UNSET))
        )
    except argparse.ArgumentError as exc:
        raise RecipeError(f"{where}: command-line override {exc}") from None
    if unknown:
        flag = next((arg for arg in unknown if arg.startswith("-")), unknown[0])
        suggestion = _did_you_mean(flag.split("=", 1)[0], parser._option_string_actions)
        raise RecipeError(f"{where}: unknown command-line argument '{flag}'{suggestion}; see --help")
    for key, value in vars(namespace).items():  # argparse converted these; checked again because
        if value is not _UNSET:  # HfArgumentParser has gaps: `--betas 0.5` for a tuple gives ('0', '.', '5')
            values[key] = _checked(where, key, value, hints[key], "on the command line")

    configs = []
    for dtype in dataclass_types:
        kwargs = {}
        for f in dataclasses.fields(dtype):
            if f.init and f.name in values:
                kwargs[f.name] = values[f.name]
            elif f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise RecipeError(  # argparse was told not to require it, so this message names the recipe
                    f"{where}: required key '{f.name}' of {dtype.__name__} is missing; "
                    f"add `{f.name}: ...` to the recipe or pass --{f.name}"
                )
        try:
            configs.append(dtype(**kwargs))
        except ValueError as exc:  # the dataclass's own __post_init__ checks
            raise RecipeError(f"{where}: invalid {dtype.__name__} settings: {exc}") from exc
    return tuple(configs)


def _plain(value: Any) -> Any:
    """Turn a resolved setting into YAML-safe data that parse_recipe reads back to the same value."""
    if isinstance(value, Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
    if isinstance(value, list | tuple | set):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


SECRET_FIELDS = frozenset({"hub_token"})  # written as null by save_resolved_recipe


def save_resolved_recipe(configs: Iterable[object], path: str | os.PathLike) -> None:
    """Write the fully resolved settings (every field of every dataclass, after overrides) as YAML,
    so a run directory records exactly what produced it; it must re-parse with parse_recipe to equal configs.

    A key shared by two dataclasses is written once; it must hold the same value in both. Credentials
    (SECRET_FIELDS) are written as null: pass them again, or through the environment, to re-run.
    """
    resolved: dict[str, Any] = {}
    for config in configs:
        for field in filter(lambda f: f.init, dataclasses.fields(config)):
            # a credential never lands in a run directory someone may share or push
            value = None if field.name in SECRET_FIELDS else _plain(getattr(config, field.name))
            if resolved.setdefault(field.name, value) != value:
                raise ValueError(f"cannot save '{field.name}': two dataclasses hold different values for it")
    header = "# Resolved settings of this run (recipe + command-line overrides); re-usable as a recipe.\n"
    Path(path).write_text(
        header + yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True), encoding="utf-8"
    )


def matches_saved_recipe(configs: Iterable[object], path: str | os.PathLike) -> bool:
    """Whether `path` (a run's saved recipe) holds exactly these resolved settings, so that the finished
    run can be reused instead of repeated.

    A field the saved recipe lacks matches when it holds its default: it was added by a later version,
    and a run from before it existed did what its default does."""
    if not Path(path).is_file():
        return False
    configs = list(configs)
    with tempfile.TemporaryDirectory() as tmp:
        save_resolved_recipe(configs, Path(tmp) / "recipe.yaml")
        current = yaml.safe_load((Path(tmp) / "recipe.yaml").read_text(encoding="utf-8"))
    saved = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if not isinstance(saved, dict) or saved.keys() - current.keys():
        return False
    defaults = {}
    for config in configs:
        for field in dataclasses.fields(config):
            if field.default is not dataclasses.MISSING:
                defaults.setdefault(field.name, _plain(field.default))
            elif field.default_factory is not dataclasses.MISSING:
                defaults.setdefault(field.name, _plain(field.default_factory()))
    return all(
        saved[name] == value if name in saved else name in defaults and defaults[name] == value
        for name, value in current.items()
    )
