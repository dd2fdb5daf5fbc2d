"""Command-line options generated from settings dataclasses, so each default is typed once.

A settings dataclass declares each field with :func:`option`, which keeps the help text,
the value parser (one of ``slimserve.cli_types``), choices and flag name in the field's
metadata. :func:`add_options` turns the fields into argparse options whose help ends with
the dataclass's own default; :func:`given` and :func:`build` turn the parsed namespace
back into the dataclass. litgpt does the same from function signatures (jsonargparse);
this is the small, torch-free subset slimserve needs: argparse stays the parser, so every
command keeps its one-line errors. Adding a command-line option = adding one field.
"""

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
MISSING = dataclasses.MISSING


def option(
    default: Any = MISSING,
    *,
    help: str,
    parse: Callable[[str], Any] | None = None,
    choices: Iterable[Any] | None = None,
    flag: str | None = None,
    metavar: str | None = None,
    unset: str | None = None,
    positional: bool = False,
    default_factory: Callable[[], Any] | Any = MISSING,
) -> Any:
    """A dataclass field that is also a command-line option.

    ``unset``: the option's value is None when not given, so the dataclass (or the code that
    builds it, e.g. a training recipe or ``SLIMSERVE_*`` variables) decides; the text says
    what that means in the help, and ``{default}`` in it is replaced by the field's default.
    No default at all makes the option required (or a positional argument with
    ``positional``).
    """
    metadata = {
        "help": help,
        "parse": parse,
        "choices": tuple(choices) if choices is not None else None,
        "flag": flag,
        "metavar": metavar,
        "unset": unset,
        "positional": positional,
    }
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata={"cli": metadata})
    return dataclasses.field(default=default, metadata={"cli": metadata})


def internal(default: Any) -> Any:
    """A setting code may change but the command line does not offer."""
    return dataclasses.field(default=default, metadata={"cli": None})


def cli_fields(cls: type, exclude: Iterable[str] = ()) -> list[dataclasses.Field]:
    """The fields of ``cls`` that are command-line options, in declaration order."""
    skipped = set(exclude)
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli") and f.name not in skipped]


def default_of(field: dataclasses.Field) -> Any:
    if field.default is not MISSING:
        return field.default
    if field.default_factory is not MISSING:
        return field.default_factory()
    return MISSING


def show(value: Any) -> str:
    """A default as a user would type it: ``1,8,32``, ``on``/``off``, ``./bundles``."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple | list):
        return ",".join(str(v) for v in value) if value else "none"
    if isinstance(value, dict):
        import json

        return json.dumps(value)
    if isinstance(value, Path) and not value.is_absolute():
        return f"./{value}"
    return str(value)


def default_text(field: dataclasses.Field, unset: str | None = None) -> str | None:
    """What ``--help`` states as the default, derived from the dataclass field."""
    meta = field.metadata["cli"]
    unset = unset if unset is not None else meta["unset"]
    default = default_of(field)
    if unset is not None:
        return unset.replace("{default}", show(default)) if default is not MISSING else unset
    if default is MISSING or default is None:
        return None
    return show(default)


def _value_type(cls: type, field: dataclasses.Field) -> Any:
    """The annotation without ``| None``: what a parser must produce."""
    hint = typing.get_type_hints(cls)[field.name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        kinds = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = kinds[0] if len(kinds) == 1 else hint
    return hint


def _parser_for(kind: Any) -> Callable[[str], Any] | None:
    if kind in (int, float, Path):
        return kind
    return None


def add_options(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    exclude: Iterable[str] = (),
    unset: dict[str, str] | None = None,
) -> None:
    """One argparse option per option field of ``cls``; the help ends with its default.

    ``unset`` makes the named fields unset-by-default on this command only (``distill``
    trains on the teacher's dataset unless one is given), with the text the help shows.
    """
    unset = unset or {}
    for field in cli_fields(cls, exclude):
        meta = field.metadata["cli"]
        kind = _value_type(cls, field)
        stated = default_text(field, unset.get(field.name))
        help_text = meta["help"] + (f" (default: {stated})" if stated else "")
        left_unset = field.name in unset or meta["unset"] is not None
        default = None if left_unset else default_of(field)
        kwargs: dict[str, Any] = {"help": help_text.replace("%", "%%")}
        if meta["metavar"]:
            kwargs["metavar"] = meta["metavar"]
        if meta["choices"] is not None:
            kwargs["choices"] = meta["choices"]
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            value_parser = meta["parse"] or _parser_for(kind)
            if value_parser is not None:
                kwargs["type"] = value_parser
        if meta["positional"]:
            action = parser.add_argument(field.name, **kwargs)
        else:
            flag = meta["flag"] or "--" + field.name.replace("_", "-")
            if meta["flag"] and kind is not bool and "metavar" not in kwargs:
                kwargs["metavar"] = flag.lstrip("-").upper().replace("-", "_")
            if default is MISSING:
                kwargs["required"] = True
            else:
                kwargs["default"] = default
            action = parser.add_argument(flag, dest=field.name, **kwargs)
        # BooleanOptionalAction appends its own "(default: ...)" (Python 3.11); ours says on/off.
        action.help = kwargs["help"]


def given(cls: type, namespace: argparse.Namespace, *, exclude: Iterable[str] = ()) -> dict[str, Any]:
    """The option values of ``cls`` in ``namespace``; unset ones (None) are left out so the
    dataclass default, a recipe or the environment decides."""
    values = {f.name: getattr(namespace, f.name) for f in cli_fields(cls, exclude)}
    return {name: value for name, value in values.items() if value is not None}


def build(cls: type[T], namespace: argparse.Namespace, *, exclude: Iterable[str] = (), **extra: Any) -> T:
    """``cls`` from the parsed options (plus ``extra`` values the command computes)."""
    return cls(**{**given(cls, namespace, exclude=exclude), **extra})
