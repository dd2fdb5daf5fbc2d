"""Argument types shared by every stage's CLI; each turns bad input into one readable line."""

import argparse
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def _parse(text: str, kind: Callable[[str], T], expected: str) -> T:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None


def _check(value: T, ok: bool, requirement: str) -> T:
    if not ok:
        raise argparse.ArgumentTypeError(f"must be {requirement}, got {value}")
    return value


def positive_int(text: str) -> int:
    value = _parse(text, int, "a whole number")
    return _check(value, value >= 1, "at least 1")


def non_negative_int(text: str) -> int:
    value = _parse(text, int, "a whole number")
    return _check(value, value >= 0, "0 or more")


def positive_float(text: str) -> float:
    value = _parse(text, float, "a number")
    return _check(value, value > 0, "positive")


def share(text: str) -> float:
    """A fraction strictly between 0 and 1 (a pruning ratio, a sparsity)."""
    value = _parse(text, float, "a number between 0 and 1")
    return _check(value, 0 < value < 1, "between 0 and 1 (exclusive)")


def share_or_bound(text: str) -> float:
    """A weight from 0 to 1 inclusive (a loss mixing weight)."""
    value = _parse(text, float, "a number between 0 and 1")
    return _check(value, 0 <= value <= 1, "between 0 and 1")


def int_list(text: str) -> tuple[int, ...]:
    """``1,8,32`` -> (1, 8, 32): sorted, without repeats, each a positive whole number."""
    values = tuple(
        _parse(part, int, "comma-separated whole numbers") for part in text.split(",") if part.strip()
    )
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive whole numbers, got {text!r}")
    return tuple(sorted(set(values)))


def json_object(text: str) -> dict:
    import json

    value = _parse(text, json.loads, "a JSON object")
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value
