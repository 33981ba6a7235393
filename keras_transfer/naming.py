"""Names made safe for files and TensorBoard tags: one cleaner for the whole package."""

from __future__ import annotations

import re
from collections.abc import Iterable

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_stem(name: str, *, default: str = "file") -> str:
    """`name` with every run of characters other than ASCII letters, digits, `_`, `.` and `-` made one `_`.

    Leading and trailing dots are dropped (no hidden files, no `..`); an
    empty result becomes `default`.
    """
    return _UNSAFE.sub("_", str(name).strip()).strip(".") or default


def unique_stems(names: Iterable[str], *, default: str = "file") -> list[str]:
    """Safe (see `safe_stem`) and unique stems, in order: `dog`, `dog_2`, `dog_3`, ...

    Uniqueness ignores case, so the files do not overwrite each other on
    case-insensitive file systems either.
    """
    stems: list[str] = []
    taken: set[str] = set()
    for name in names:
        stem = safe_stem(name, default=default)
        unique, k = stem, 2
        while unique.lower() in taken:
            unique, k = f"{stem}_{k}", k + 1
        taken.add(unique.lower())
        stems.append(unique)
    return stems
