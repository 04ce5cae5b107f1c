"""Build argparse flags from a config dataclass; run a command with one-line errors."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import typing
from collections.abc import Callable
from typing import Any

from forward_influence.errors import InputError


def _ints(s: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in s.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None


def _floats(s: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in s.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {s!r}") from None


def _strs(s: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in s.split(",") if x.strip())


def add_config_flags(parser: argparse.ArgumentParser, cls: type, positional: tuple[str, ...] = ()) -> None:
    """One flag per dataclass field, help text from the field metadata."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        help_ = f.metadata.get("help", "")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        kind = f.metadata.get("type")
        hint = hints[f.name]
        args = (f.name,) if f.name in positional else (f"--{f.name.replace('_', '-')}",)
        kw: dict[str, Any] = {"help": f"{help_} (default: {default})", "default": default}
        if f.name not in positional:
            kw["dest"] = f.name
        if kind == "ints":
            kw["type"] = _ints
        elif kind == "floats":
            kw["type"] = _floats
        elif kind == "strs":
            kw["type"] = _strs
        elif hint is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif int in typing.get_args(hint) or hint is int:
            kw["type"] = int
        elif hint is float:
            kw["type"] = float
        else:
            kw["type"] = str
        parser.add_argument(*args, **kw)


def report_failed(prog: str, failed: list[dict[str, Any]]) -> int:
    """Name the units that kept failing (one line each) and return exit status 1."""
    for f in failed:
        print(f"{prog}: unit {f['unit']} failed after {f['attempts']} attempts: {f['error']}", file=sys.stderr)
    print(
        f"{prog}: {len(failed)} unit(s) failed, run status partial; rerun the same command to retry them",
        file=sys.stderr,
    )
    return 1


def run_cli(prog: str, main: Callable[[], int | None]) -> None:
    """Run ``main``; user errors become one line on stderr and exit status 2."""
    logging.basicConfig(level=logging.WARNING, format=f"{prog}: %(message)s")
    try:
        code = main()
    except InputError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; rerun the same command to resume", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
