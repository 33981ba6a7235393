"""Settings declared once: default, help text, validation and command-line flag.

A configuration is a dataclass whose fields are made with `setting(...)`. The
field carries everything about the setting:

    @dataclasses.dataclass
    class MyConfig:
        steps: int = setting(100, kind=Int(min=1), help="gradient steps")

- `validate(config)` (call it from `__post_init__`) checks every field
  against its `kind` and raises one `ValueError` that names the bad value and
  what would be valid;
- `keras_transfer.experiments._cli.add_flags` makes one flag per field
  (`--steps`, its type, choices, default and help) and `from_args` builds the
  config back from the parsed flags, so adding a setting is one declaration.

Kinds (`Int`, `Real`, `Choice`, `Text`, `Path`, `Flag`, `Ints`/`Reals`
lists) know how to parse a command-line string, whether a Python value is
valid, and how to say what is valid. `Optional(kind)` also accepts `None`.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

_META = "keras_transfer"


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_real(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _number(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


class Kind:
    """What values a setting takes."""

    metavar: str | None = None

    def valid(self) -> str:  # "an int >= 1"
        raise NotImplementedError

    def accepts(self, value) -> bool:
        raise NotImplementedError

    def parse(self, text: str):
        """The value of a command-line string (raises `ValueError`)."""
        raise NotImplementedError

    def normalize(self, value):
        """The stored form of an accepted value (e.g. a path as `str`)."""
        return value

    def error(self, name: str, value) -> ValueError:
        return ValueError(f"Expected {name} to be {self.valid()}. Received: {name}={value!r}")

    def check(self, name: str, value):
        """`value` in its stored form (a NumPy scalar as its Python value) when accepted.

        Raises:
            ValueError: naming `name`, the value and what this kind accepts.
        """
        plain = value.item() if isinstance(value, np.generic) else value
        if not self.accepts(plain):
            raise self.error(name, value)
        return self.normalize(plain)


@dataclasses.dataclass(frozen=True)
class Int(Kind):
    """An int in `[min, max]` (either bound optional)."""

    min: int | None = None
    max: int | None = None

    def valid(self) -> str:
        return "an int" + _bounds(self.min, self.max, min_open=False, max_open=False)

    def accepts(self, value) -> bool:
        return _is_int(value) and _within(value, self.min, self.max, False, False)

    def parse(self, text: str) -> int:
        return int(text)

    def normalize(self, value):
        return int(value)  # numpy integers become plain ints


@dataclasses.dataclass(frozen=True)
class Real(Kind):
    """A finite number in `[min, max]`; `min_open` / `max_open` exclude a bound."""

    min: float | None = None
    max: float | None = None
    min_open: bool = False
    max_open: bool = False

    def valid(self) -> str:
        return "a number" + _bounds(self.min, self.max, min_open=self.min_open, max_open=self.max_open)

    def accepts(self, value) -> bool:
        return (
            _is_real(value)
            and math.isfinite(value)
            and _within(value, self.min, self.max, self.min_open, self.max_open)
        )

    def parse(self, text: str) -> float:
        return float(text)

    def normalize(self, value):
        return float(value) if isinstance(value, (np.floating, np.integer)) else value


@dataclasses.dataclass(frozen=True)
class Choice(Kind):
    """One of a fixed set of strings."""

    choices: tuple[str, ...]

    def valid(self) -> str:
        return "one of " + ", ".join(repr(c) for c in self.choices)

    def accepts(self, value) -> bool:
        return isinstance(value, str) and value in self.choices

    def parse(self, text: str) -> str:
        return text


@dataclasses.dataclass(frozen=True)
class Text(Kind):
    """A non-empty string (a name)."""

    metavar: str | None = None

    def valid(self) -> str:
        return "a non-empty string"

    def accepts(self, value) -> bool:
        return isinstance(value, str) and bool(value.strip())

    def parse(self, text: str) -> str:
        return text


@dataclasses.dataclass(frozen=True)
class Path(Kind):
    """A file-system path (`str` or `os.PathLike`, stored as `str`)."""

    metavar: str | None = "PATH"

    def valid(self) -> str:
        return "a path"

    def accepts(self, value) -> bool:
        return isinstance(value, (str, os.PathLike)) and bool(os.fspath(value))

    def parse(self, text: str) -> str:
        return text

    def normalize(self, value):
        return os.fspath(value)


@dataclasses.dataclass(frozen=True)
class Flag(Kind):
    """True or False (`--name` / `--no-name` on the command line)."""

    def valid(self) -> str:
        return "True or False"

    def accepts(self, value) -> bool:
        return isinstance(value, bool)

    def parse(self, text: str) -> bool:
        raise ValueError("a flag takes no value")


@dataclasses.dataclass(frozen=True)
class Many(Kind):
    """A tuple of values of one kind (comma-separated on the command line)."""

    item: Kind
    min_items: int = 1

    @property
    def metavar(self) -> str:
        return "A,B,..."

    def valid(self) -> str:
        return f"a sequence of at least {self.min_items} values, each {self.item.valid()}"

    def accepts(self, value) -> bool:
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            return False
        return len(value) >= self.min_items and all(self.item.accepts(v) for v in value)

    def parse(self, text: str) -> tuple:
        return tuple(self.item.parse(part.strip()) for part in text.split(",") if part.strip())

    def normalize(self, value):
        return tuple(self.item.normalize(v) for v in value)


@dataclasses.dataclass(frozen=True)
class Optional(Kind):
    """`None` or a value of `kind`; `none_word` spells `None` on the command line."""

    kind: Kind
    none_word: str | None = None

    @property
    def metavar(self) -> str | None:
        return self.kind.metavar

    def valid(self) -> str:
        return f"None or {self.kind.valid()}"

    def accepts(self, value) -> bool:
        return value is None or self.kind.accepts(value)

    def parse(self, text: str):
        if self.none_word is not None and text.lower() == self.none_word:
            return None
        return self.kind.parse(text)

    def normalize(self, value):
        return None if value is None else self.kind.normalize(value)


@dataclasses.dataclass(frozen=True)
class Either(Kind):
    """A value of any of `kinds` (tried in order when parsing)."""

    kinds: tuple[Kind, ...]
    metavar: str | None = None

    def valid(self) -> str:
        return " or ".join(k.valid() for k in self.kinds)

    def accepts(self, value) -> bool:
        return any(k.accepts(value) for k in self.kinds)

    def parse(self, text: str):
        for kind in self.kinds:
            try:
                value = kind.parse(text)
            except ValueError:
                continue
            if kind.accepts(value):
                return value
        raise ValueError(text)

    def normalize(self, value):
        for kind in self.kinds:
            if kind.accepts(value):
                return kind.normalize(value)
        return value


def _bounds(lo, hi, *, min_open: bool, max_open: bool) -> str:
    parts = []
    if lo is not None:
        parts.append(f"{'>' if min_open else '>='} {_number(lo)}")
    if hi is not None:
        parts.append(f"{'<' if max_open else '<='} {_number(hi)}")
    return (" " + " and ".join(parts)) if parts else ""


def _within(value, lo, hi, min_open: bool, max_open: bool) -> bool:
    if lo is not None and (value <= lo if min_open else value < lo):
        return False
    if hi is not None and (value >= hi if max_open else value > hi):
        return False
    return True


@dataclasses.dataclass(frozen=True)
class Spec:
    """Everything declared about one setting (the field's metadata)."""

    kind: Kind
    help: str
    flag: str | None = ""  # "" : --field-name; None: no flag
    fingerprint: bool = True
    group: str | None = None
    metavar: str | None = None


def setting(
    default: Any = dataclasses.MISSING,
    *,
    kind: Kind,
    help: str,
    flag: str | None = "",
    fingerprint: bool = True,
    group: str | None = None,
    metavar: str | None = None,
    default_factory: Callable[[], Any] | None = None,
) -> Any:
    """A dataclass field that declares a setting once.

    Args:
        default: the default value.
        kind: the values it takes (`Int(min=1)`, `Choice(...)`, ...).
        help: one sentence for `--help` and the docs.
        flag: the command-line flag; `""` derives `--field-name`, `None`
            means no flag. Defaults to `""`.
        fingerprint: whether the setting changes what is computed (part of a
            run's resume fingerprint). Defaults to `True`.
        group: `--help` section. Defaults to `None`.
        metavar: the flag's metavar. Defaults to `None` (the kind's).
        default_factory: instead of `default`, for mutable defaults.
    """
    spec = Spec(kind=kind, help=help, flag=flag, fingerprint=fingerprint, group=group, metavar=metavar)
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata={_META: spec})
    return dataclasses.field(default=default, metadata={_META: spec})


def spec_of(field: dataclasses.Field) -> Spec | None:
    return field.metadata.get(_META)


def declared(config_type, name: str, *, group: str | None = None) -> Any:
    """The setting of `config_type`'s field `name`, declared again for a field of another config.

    A config that exposes another's settings (`TrainConfig.adversarial_norm`
    is `AdversarialTraining.norm`) declares them once this way: same
    default, kind, help, metavar and fingerprint; the flag derives from the
    new field's name.

    Args:
        config_type: a dataclass whose fields are made with `setting`.
        name: the name of one of its declared fields.
        group: the `--help` section of the new field. Defaults to `None`
            (the declared field's group).

    Raises:
        ValueError: when `config_type` declares no setting `name`.
    """
    field = next((f for f, _ in specs(config_type) if f.name == name), None)
    if field is None:
        raise ValueError(f"Expected name to be one of {[f.name for f, _ in specs(config_type)]}, the settings of "
                         f"{config_type.__name__}. Received: name={name!r}")
    spec = spec_of(field)
    factory = None if field.default_factory is dataclasses.MISSING else field.default_factory
    return setting(field.default, kind=spec.kind, help=spec.help, fingerprint=spec.fingerprint,
                   group=group if group is not None else spec.group, metavar=spec.metavar, default_factory=factory)


def specs(config_type) -> list[tuple[dataclasses.Field, Spec]]:
    """The declared settings of a config class (or instance), in field order."""
    return [(f, spec_of(f)) for f in dataclasses.fields(config_type) if spec_of(f) is not None]


def validate(config) -> None:
    """Checks every declared field of `config`; normalizes paths and sequences in place.

    Raises:
        ValueError: naming the first bad field, its value and what is valid.
    """
    for field, spec in specs(config):
        value = getattr(config, field.name)
        if not spec.kind.accepts(value):
            raise spec.kind.error(field.name, value)
        normalized = spec.kind.normalize(value)
        if normalized is not value:
            object.__setattr__(config, field.name, normalized)


def fingerprinted(config) -> dict[str, Any]:
    """The fields of `config` that change what a run computes."""
    return {f.name: getattr(config, f.name) for f, spec in specs(config) if spec.fingerprint}


def flag_name(field: dataclasses.Field, spec: Spec) -> str | None:
    if spec.flag is None:
        return None
    return spec.flag or "--" + field.name.replace("_", "-")


def argparse_type(kind: Kind, flag: str) -> Callable[[str], Any]:
    """`kind.parse` for argparse: a bad string names the flag and what is valid."""

    def parse(text: str):
        try:
            value = kind.parse(text)
        except ValueError:
            value = dataclasses.MISSING
        if value is dataclasses.MISSING or not kind.accepts(value):
            raise argparse.ArgumentTypeError(f"expected {kind.valid()}. Received: {flag} {text}")
        return value

    parse.__name__ = flag  # argparse names the type in some messages
    return parse
