"""Recipes: one YAML file of settings per run, overridable from the command line.

The YAML file is a flat mapping of field names of the stage's dataclasses (``learning_rate: 1.0e-4``),
given as TRL's and open-r1's scripts take it, ``--config RECIPE.yaml``, or as a leading ``RECIPE.yaml``
for short. Parsing runs on TRL's ``TrlParser``: its ``set_defaults_with_config`` makes the recipe's values
the parser's defaults (``--help`` shows them), and ``--key value`` flags override them. Every bool field
also gets a ``--no_<key>`` flag. A key shared by two dataclasses sets both.

Four things TrlParser does not do are done here. The YAML is read with two YAML 1.2 rules instead of
PyYAML's YAML 1.1 ones (TrlParser uses ``yaml.safe_load``): ``1e-4`` is a float (not the string "1e-4"),
and only true/false are booleans (``yes``/``no``/``on``/``off`` stay strings). Every key and value, from
the file and from the command line, is checked against the dataclasses' type hints, with a "did you
mean" for a misspelt key, and NaN or infinity is refused in every number. ``--key null`` (or ``None``)
sets a field that may be null back to null. A relative recipe path that the working directory lacks is
looked up in the installed package (``recipes/demo/train.yaml``), so the same strings work in a checkout
and from a wheel.
"""

import argparse
import dataclasses
import difflib
import math
import os
import re
import types
from collections.abc import Callable, Collection, Iterable, Sequence
from enum import Enum
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml
from trl import TrlParser

__all__ = [
    "SECRET_FIELDS",
    "RecipeError",
    "check_finite",
    "locate_recipe",
    "matches_saved_recipe",
    "parse_recipe",
    "recipe_changes",
    "save_resolved_recipe",
    "split_recipe_argument",
]

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the installed reasondistill/, home of recipes/demo/


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
NULL_WORDS = ("null", "None")  # on the command line, the value of a field that may be null


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


def _admits_none(hint: Any) -> bool:
    return hint is type(None) or (
        get_origin(hint) in (Union, types.UnionType) and type(None) in get_args(hint)
    )


def _nonfinite(value: Any) -> bool:
    """Whether `value` is, or holds, a NaN or an infinity (YAML's .nan/.inf, the command line's nan/inf)."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(map(_nonfinite, value.values()))
    if isinstance(value, list | tuple | set):
        return any(map(_nonfinite, value))
    return False


def _checked(where: str, key: str, value: Any, hint: Any, source: str) -> Any:
    try:
        value = _conform(value, hint)
    except TypeError:
        raise RecipeError(
            f"{where}: key '{key}' expects {_describe(hint)}, got {value!r} ({type(value).__name__}) "
            f"{source}; fix its value"
        ) from None
    if _nonfinite(value):  # NaN passes every `x < 0` check after this and would surface much later
        raise RecipeError(
            f"{where}: key '{key}' must be a finite number, got {value!r} {source}; fix its value"
        )
    return value


def check_finite(config: object) -> None:
    """Refuse NaN and infinity in a dataclass's settings; for configs built in Python (parse_recipe
    already refuses them in recipes). Raises ValueError naming the field."""
    for field in dataclasses.fields(config):
        if field.init and _nonfinite(value := getattr(config, field.name)):
            raise ValueError(f"{field.name} must be a finite number, got {value!r}")


def locate_recipe(path: str | os.PathLike) -> Path:
    """The recipe file that `path` names: as given (a relative path from the working directory), else the
    same relative path inside the installed package (`recipes/demo/train.yaml` ->
    <package>/recipes/demo/train.yaml), so the demo's recipe strings work from any directory.

    Raises:
        RecipeError: no such file; the message names every place looked.
    """
    given = Path(path)
    if given.is_file():
        return given
    if given.is_absolute():
        raise RecipeError(f"{path}: recipe file not found; check the path")
    packaged = PACKAGE_DIR / given
    if packaged.is_file():
        return packaged
    raise RecipeError(
        f"{path}: recipe file not found in the working directory ({Path.cwd() / given}) nor in the "
        f"installed package ({packaged}); check the path"
    )


def _read_yaml(path: Path) -> dict[str, Any]:
    text = path.read_text(encoding="utf-8")
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


def _take_config_flag(
    recipe: str | os.PathLike | None, args: Sequence[str]
) -> tuple[str | os.PathLike | None, list[str]]:
    """`recipe`, or else the path of TrlParser's `--config RECIPE.yaml` taken out of `args`; and the
    rest of `args`."""
    args = list(args)
    while "--config" in args:
        index = args.index("--config")
        if index + 1 == len(args):
            raise RecipeError("--config needs the recipe's path: --config RECIPE.yaml")
        if recipe is not None:
            raise RecipeError(f"two recipes given, {recipe} and --config {args[index + 1]}; give one")
        recipe = args[index + 1]
        del args[index : index + 2]
    return recipe, args


def split_recipe_argument(args: Sequence[str]) -> tuple[str | None, list[str]]:
    """A stage's recipe path (None if it has none) and its `--key value` overrides, from its arguments:
    `--config RECIPE.yaml` anywhere, as TrlParser takes it, or a first argument that is not a flag
    (the shorthand `reasondistill train RECIPE.yaml --key value`).

    Raises:
        RecipeError: a recipe given both ways, or `--config` without a path.
    """
    if args and not args[0].startswith("-"):
        return _take_config_flag(args[0], args[1:])
    return _take_config_flag(None, args)


def _or_null(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse `type` that reads NULL_WORDS as None and anything else as `convert` does."""

    def parse(text: str) -> Any:
        return None if text in NULL_WORDS else convert(text)

    parse.__name__ = getattr(convert, "__name__", "value")  # argparse names the type in "invalid int value"
    return parse


def _is_required(f: dataclasses.Field) -> bool:
    return f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def parse_recipe(
    recipe_path: str | os.PathLike | None, dataclass_types: Sequence[type], cli_args: Sequence[str] = ()
) -> tuple:
    """Return one instance per dataclass type, filled from the YAML file then the CLI overrides.

    Args:
        recipe_path: YAML recipe (a flat mapping of field names), found by `locate_recipe`; None means
            `--config RECIPE.yaml` among `cli_args` (as `TrlParser.parse_args_and_config` takes it) or none.
        dataclass_types: the stage's settings dataclasses, e.g. ``(ModelArgs, DistillConfig)``.
        cli_args: ``--key value`` overrides, e.g. ``sys.argv[3:]``; ``--help`` prints them all and exits.

    Raises:
        RecipeError: recipe file not found or given twice, unreadable YAML, unknown key or flag, wrong type,
            missing required field, or a ValueError from a dataclass's ``__post_init__``; the message names
            the file and the key.
    """
    recipe_path, cli_args = _take_config_flag(recipe_path, cli_args)
    path = None if recipe_path is None else locate_recipe(recipe_path)
    where = str(path) if path is not None else "command line (no recipe file)"
    hints = {}  # field name -> type hint; a key shared by two dataclasses keeps the first hint
    for dtype in dataclass_types:
        type_hints = get_type_hints(dtype)  # field.type may be a string, or rewritten by HfArgumentParser
        for f in dataclasses.fields(dtype):
            if f.init:
                hints.setdefault(f.name, type_hints[f.name])

    values = {}
    for key, value in (_read_yaml(path) if path is not None else {}).items():
        if key not in hints:
            raise RecipeError(
                f"{where}: unknown key '{key}'{_did_you_mean(str(key), hints)}; "
                f"remove it or use a setting of {', '.join(d.__name__ for d in dataclass_types)}"
            )
        values[key] = _checked(where, key, value, hints[key], "in the recipe")

    # HfArgumentParser cannot register one flag twice ("resolve" keeps the last); abbreviations would let
    # a typo such as --learning set --learning_rate.
    parser = TrlParser(dataclass_types, conflict_handler="resolve", allow_abbrev=False, exit_on_error=False)
    # TrlParser's mechanism: the recipe's values become the flags' defaults (what --help shows) and stop
    # being required. Required keys the recipe lacks are lifted too, so that a missing one is reported
    # below with the recipe's name and the fix, not as argparse's usage error.
    required = [f.name for dtype in dataclass_types for f in dataclasses.fields(dtype) if _is_required(f)]
    parser.set_defaults_with_config(**{**dict.fromkeys(required, None), **values})
    for action in parser._actions:
        if isinstance(action.help, str):  # argparse %-formats help: a plain "95%" would break --help
            action.help = re.sub(r"%%|%\(|%", lambda m: "%%" if m.group() == "%" else m.group(), action.help)
    for (
        action
    ) in parser._actions:  # `--key null` for a field that may be null (argparse would say "invalid int")
        if isinstance(action, argparse._StoreAction) and _admits_none(hints.get(action.dest)):
            action.type = _or_null(action.type or str)
            action.choices = None if action.choices is None else [*action.choices, None]
    for name, hint in hints.items():  # HfArgumentParser adds --no_<key> only to bools that default to True
        if (hint is bool or hint == bool | None) and f"--no_{name}" not in parser._option_string_actions:
            parser.add_argument(f"--no_{name}", action="store_false", dest=name, help=argparse.SUPPRESS)
    # Parsed over placeholders, so that only what the command line set comes back: checked, then applied
    # over the recipe's values. A shared key that neither sets keeps each dataclass's own default.
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
            value = None if value == [None] else value  # `--list_key null`
            values[key] = _checked(where, key, value, hints[key], "on the command line")

    configs = []
    for dtype in dataclass_types:
        kwargs = {}
        for f in dataclasses.fields(dtype):
            if f.init and f.name in values:
                kwargs[f.name] = values[f.name]
            elif _is_required(f):
                raise RecipeError(
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


def _resolved_settings(configs: Iterable[object]) -> dict[str, Any]:
    """Every field of every dataclass as YAML-safe data, a shared key once, credentials as null."""
    resolved: dict[str, Any] = {}
    for config in configs:
        for field in filter(lambda f: f.init, dataclasses.fields(config)):
            # a credential never lands in a run directory someone may share or push
            value = None if field.name in SECRET_FIELDS else _plain(getattr(config, field.name))
            if resolved.setdefault(field.name, value) != value:
                raise ValueError(f"cannot save '{field.name}': two dataclasses hold different values for it")
    return resolved


def save_resolved_recipe(configs: Iterable[object], path: str | os.PathLike) -> None:
    """Write the fully resolved settings (every field of every dataclass, after overrides) as YAML,
    so a run directory records exactly what produced it; it must re-parse with parse_recipe to equal configs.

    A key shared by two dataclasses is written once; it must hold the same value in both. Credentials
    (SECRET_FIELDS) are written as null: pass them again, or through the environment, to re-run.
    """
    header = "# Resolved settings of this run (recipe + command-line overrides); re-usable as a recipe.\n"
    text = yaml.safe_dump(_resolved_settings(configs), sort_keys=False, allow_unicode=True)
    Path(path).write_text(header + text, encoding="utf-8")


# Where and how a run is started, not what it computes: a run directory moved elsewhere, cleared with
# --overwrite or resumed holds the same run.
RUN_CONTROL_FIELDS = frozenset({"output_dir", "overwrite", "resume_from_checkpoint"})


def _short(value: Any) -> str:
    """A setting's value for a one-line message; "(unset)" for a field one side lacks."""
    if value is _UNSET:
        return "(unset)"
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("\n...").strip()
    return text if len(text) <= 60 else text[:57] + "..."


def recipe_changes(
    configs: Iterable[object], path: str | os.PathLike, ignore: Collection[str] = ()
) -> list[str]:
    """How these resolved settings differ from the run recorded in `path` (a saved recipe), one
    "key: old -> new" per setting; empty when they are the same run. RUN_CONTROL_FIELDS and `ignore`
    (a stage's settings that change no output, such as generate's NON_SEMANTIC_FIELDS) do not count.

    A field the saved recipe lacks was added by a later version: it matches the value that runs from before
    it existed behaved as, the config class's `BEFORE_ADDED[name]` where the field's default does otherwise
    (PruneConfig.depth_criterion), else its default."""
    configs = list(configs)
    current = _resolved_settings(configs)
    saved = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if not isinstance(saved, dict):
        return [f"{path} is not a saved recipe"]
    defaults = {}
    for config in configs:
        before_added = getattr(type(config), "BEFORE_ADDED", {})
        for field in dataclasses.fields(config):
            if field.name in before_added:
                defaults.setdefault(field.name, _plain(before_added[field.name]))
            elif field.default is not dataclasses.MISSING:
                defaults.setdefault(field.name, _plain(field.default))
            elif field.default_factory is not dataclasses.MISSING:
                defaults.setdefault(field.name, _plain(field.default_factory()))
    changes = []
    for name in [*current, *(name for name in saved if name not in current)]:
        old, new = saved.get(name, defaults.get(name, _UNSET)), current.get(name, _UNSET)
        if name not in RUN_CONTROL_FIELDS and name not in ignore and old != new:
            changes.append(f"{name}: {_short(old)} -> {_short(new)}")
    return changes


def matches_saved_recipe(configs: Iterable[object], path: str | os.PathLike) -> bool:
    """Whether `path` (a run's saved recipe) holds exactly these resolved settings (`recipe_changes`)."""
    return Path(path).is_file() and not recipe_changes(configs, path)
