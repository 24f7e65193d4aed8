"""Start-up checks of settings: a wrong type or an impossible value fails naming its key."""

import math


def check_number(
    key: str,
    value,
    low: float = -math.inf,
    high: float = math.inf,
    integer: bool = False,
    open_low: bool = False,
) -> None:
    """Raise ValueError naming `key` unless `value` is a number (an integer if `integer`) in
    [low, high], or (low, high] with `open_low`."""
    kind = "an integer" if integer else "a number"
    numeric = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not numeric or math.isnan(value):
        raise ValueError(f"{key}={value!r}: must be {kind} in {interval(low, high, open_low)}")
    if value < low or value > high or (open_low and value == low):
        raise ValueError(f"{key}={value!r}: must lie in {interval(low, high, open_low)}")


def interval(low: float, high: float, open_low: bool) -> str:
    left = "(" if open_low or low == -math.inf else "["
    right = "]" if high < math.inf else ")"
    return f"{left}{low:g}, {high:g}{right}"
