"""One command-line policy for every command of `keras_transfer.experiments`.

- Flags come from the configs' `setting(...)` declarations (`add_flags`,
  `from_args`): a setting is declared once, in its config.
- Bad input of any kind ends in one line `PROG: error: ...` naming the bad
  value, exit status 2, no traceback (`--debug`, or `KERAS_TRANSFER_DEBUG=1`,
  prints the traceback for a bug report).
- Ctrl-C ends with status 130 and says how to continue.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from keras_transfer import errors
from keras_transfer import settings as settings_lib

DEBUG_ENV = "KERAS_TRANSFER_DEBUG"
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class Parser(argparse.ArgumentParser):
    """`argparse` with every default shown in `--help` and one-line usage errors."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)
        self.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS,
            help=f"show the traceback of an error (for bug reports; or set {DEBUG_ENV}=1)",
        )

    def error(self, message: str):
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see --help)\n")


def add_flags(
    parser: argparse.ArgumentParser,
    config_type,
    *,
    skip: Sequence[str] = (),
    defaults: dict[str, Any] | None = None,
    required: Sequence[str] = (),
    groups: dict[str, Any] | None = None,
) -> None:
    """Adds one flag per declared setting of `config_type`.

    Args:
        parser: the parser.
        config_type: a dataclass whose fields are `settings.setting(...)`.
        skip: field names that get no flag here.
        defaults: default values that differ from the config's for this
            command.
        required: field names whose flag is required.
        groups: `--help` sections by name, shared between several configs.
    """
    groups = groups if groups is not None else {}
    defaults = defaults or {}
    for field, spec in settings_lib.specs(config_type):
        flag = settings_lib.flag_name(field, spec)
        if flag is None or field.name in skip:
            continue
        if spec.group and spec.group not in groups:
            groups[spec.group] = parser.add_argument_group(spec.group)
        target = groups.get(spec.group, parser) if spec.group else parser
        default = defaults.get(field.name, _default(field))
        kwargs: dict[str, Any] = {"dest": field.name, "help": spec.help}
        if field.name in required:  # no default to show in --help ("(default: None)" would mislead)
            kwargs["required"] = True
            kwargs["default"] = argparse.SUPPRESS
        else:
            kwargs["default"] = default
        if _is_flag(spec.kind):  # an Optional(Flag()) stays None (its config's default) unless given
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kind = spec.kind
            kwargs["type"] = settings_lib.argparse_type(kind, flag)
            choices = _choices(kind)
            metavar = spec.metavar or kind.metavar or (("{" + ",".join(choices) + "}") if choices else None)
            if metavar:
                kwargs["metavar"] = metavar
        target.add_argument(flag, **kwargs)


def add_repeated_flag(
    parser: argparse.ArgumentParser,
    config_type,
    field_name: str,
    flag: str,
    *,
    metavar: str,
    required: bool = False,
    groups: dict | None = None,
) -> None:
    """Adds `flag`, given once per value (`--class a --class b`), for a `Many` setting of `config_type`.

    The help, the `--help` section and the check of each value come from the
    setting's declaration; `groups` is shared with `_cli.add_flags`.
    """
    field = next(f for f in dataclasses.fields(config_type) if f.name == field_name)
    spec = settings_lib.spec_of(field)
    target = parser
    if spec.group and groups is not None:
        if spec.group not in groups:
            groups[spec.group] = parser.add_argument_group(spec.group)
        target = groups[spec.group]
    kwargs = {"required": True, "default": argparse.SUPPRESS} if required else {"default": []}
    target.add_argument(
        flag, dest=field_name, action="append", metavar=metavar, help=spec.help,
        type=settings_lib.argparse_type(spec.kind.item, flag), **kwargs,
    )


def _default(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def _is_flag(kind) -> bool:
    if isinstance(kind, settings_lib.Optional):
        kind = kind.kind
    return isinstance(kind, settings_lib.Flag)


def _choices(kind) -> tuple[str, ...] | None:
    if isinstance(kind, settings_lib.Choice):
        return kind.choices
    if isinstance(kind, settings_lib.Optional) and isinstance(kind.kind, settings_lib.Choice):
        return kind.kind.choices + ((kind.none_word,) if kind.none_word else ())
    return None


def from_args(config_type, args: argparse.Namespace, **values):
    """Builds `config_type` from parsed flags (and explicit `values`)."""
    for field, spec in settings_lib.specs(config_type):
        if field.name not in values and hasattr(args, field.name):
            values[field.name] = getattr(args, field.name)
    return config_type(**values)


def debugging(argv: Sequence[str] | None) -> bool:
    argv = sys.argv[1:] if argv is None else argv
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def run_main(prog: str, argv: Sequence[str] | None, body: Callable[[], Any], *, resume_hint: str | None = None) -> int:
    """Runs `body` under the command-line policy and returns the exit status.

    Args:
        prog: the command, for messages.
        argv: the arguments (for `--debug`).
        body: parses, validates and runs; returns nothing of interest.
        resume_hint: what Ctrl-C prints after "interrupted.". Defaults to
            `None` (nothing more).
    """
    try:
        body()
    except SystemExit as stop:  # argparse: --help (0) or a usage error (2, one line printed)
        return stop.code if isinstance(stop.code, int) else EXIT_USER_ERROR
    except KeyboardInterrupt:
        if debugging(argv):
            traceback.print_exc()
        print(f"\n{prog}: interrupted.{' ' + resume_hint if resume_hint else ''}", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except errors.USER_ERRORS as error:
        if debugging(argv):
            traceback.print_exc()
        print(f"{prog}: error: {errors.one_line(error)}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    return 0
