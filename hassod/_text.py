"""Wording shared by the commands' messages."""

from __future__ import annotations


def counted(number: int, noun: str, plural: str | None = None) -> str:
    """``number`` and ``noun``, plural unless ``number`` is 1: ``1 image``, ``3 images``
    (``plural`` where adding an s is wrong: ``counted(2, "process", "processes")``)."""
    if number == 1:
        return f"{number} {noun}"
    return f"{number} {plural or noun + 's'}"
