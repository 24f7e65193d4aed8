"""Start-up checks of settings: a wrong type or an impossible value fails naming its key."""

import math

import torch


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


def check_gpu(key: str, value) -> None:
    """Raise ValueError naming `key` where `value` asks for a CUDA GPU ("gpu", "cuda", "cuda:1")
    and torch finds none: Lightning says only "No supported gpu backend found!", torch "Found
    no NVIDIA driver". (On a GPU machine, the usual cause is a driver older than torch's CUDA
    build, which torch warns of as it looks.)"""
    if not str(value).startswith(("gpu", "cuda")) or torch.cuda.is_available():
        return
    build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    raise ValueError(
        f"{key}={value}: torch {torch.__version__} ({build}) finds no usable CUDA GPU here; "
        f"{key}=cpu runs on the CPU, {key}=auto on a GPU where there is one"
    )
