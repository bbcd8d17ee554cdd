"""Shape rules every side of a bundle agrees on: padding to the length multiple and the
number of prediction points per pyramid level."""

from __future__ import annotations


def pad_to(n: int, multiple: int) -> int:
    """``n`` steps rounded up to a multiple of ``multiple`` (at least one multiple): the
    grounding graph's input length for ``n`` valid steps."""
    return max(multiple, -(-n // multiple) * multiple)


def level_sizes(length: int, levels: int) -> list[int]:
    """Points per level (finest first) for a padded input of ``length`` steps; level ``i``
    has stride ``2**i``."""
    return [length // 2**i for i in range(levels)]
