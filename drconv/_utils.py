"""Argument helpers shared by the op and the layer."""
from typing import Tuple, Union

IntPair = Union[int, Tuple[int, int]]


def pair(value: IntPair, name: str, minimum: int) -> Tuple[int, int]:
    """Return ``value`` as an ``(h, w)`` pair of ints, each at least ``minimum``.

    Raises:
        TypeError: ``value`` is not an int or a pair of ints.
        ValueError: an entry is below ``minimum``.
    """
    if isinstance(value, bool):
        raise TypeError(f'{name} must be an int or a pair of ints, got {value!r}')
    if isinstance(value, int):
        value = (value, value)
    if (not isinstance(value, (tuple, list)) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        raise TypeError(f'{name} must be an int or a pair of ints, got {value!r}')
    if min(value) < minimum:
        raise ValueError(f'{name} must be >= {minimum}, got {tuple(value)}')
    return int(value[0]), int(value[1])


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Spatial output size of a convolution along one axis (as nn.Conv2d computes it)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
