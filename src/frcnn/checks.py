"""Start-up checks of settings: a wrong type or an impossible value fails naming its key, and
the messages write a setting as users type it."""

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import torch


def check_number(
    key: str,
    value,
    low: float = -math.inf,
    high: float = math.inf,
    integer: bool = False,
    open_low: bool = False,
    open_high: bool = False,
) -> None:
    """Raise ValueError naming `key` unless `value` is a number (an integer if `integer`) in
    [low, high], its ends left out with `open_low` and `open_high`."""
    kind = "an integer" if integer else "a number"
    span = interval(low, high, open_low, open_high)
    if not is_number(value, integer):
        raise ValueError(f"{key}={value!r}: must be {kind} in {span}")
    if not low <= value <= high or (open_low and value == low) or (open_high and value == high):
        raise ValueError(f"{key}={value!r}: must lie in {span}")


def check_flag(key: str, value, *others) -> None:
    """Raise ValueError naming `key` unless `value` is true or false, or one of `others` (a
    word such as "auto", or None): Hydra reads `no`, `off` or `0` as a string or a number, all
    of which Python would take as true or false unasked."""
    if isinstance(value, bool) or (not isinstance(value, int | float) and value in others):
        return
    words = ["true", "false", *("null" if o is None else str(o) for o in others)]
    raise ValueError(f"{key}={value!r}: must be {', '.join(words[:-1])} or {words[-1]}")


def is_number(value, integer: bool = False) -> bool:
    """Whether `value` is a number (an integer if `integer`), not a boolean, not NaN."""
    numeric = isinstance(value, int) if integer else isinstance(value, int | float)
    return numeric and not isinstance(value, bool) and not math.isnan(value)


def interval(low: float, high: float, open_low: bool, open_high: bool = False) -> str:
    left = "(" if open_low or low == -math.inf else "["
    right = ")" if open_high or high == math.inf else "]"
    return f"{left}{bound(low)}, {bound(high)}{right}"


def bound(value: float) -> str:
    """A bound as users type it: a whole number in full (2**32 - 1, not 4.29497e+09)."""
    return str(int(value)) if math.isfinite(value) and value == int(value) else f"{value:g}"


def check_path(key: str, value) -> None:
    """Raise ValueError naming `key` unless `value` is a path (a string): Hydra reads a bare
    number (`input=2024`, a folder in the current one; `1e3` too) as a number."""
    if isinstance(value, str | os.PathLike):
        return
    if is_number(value):  # (`1e3` reads as 1000.0: its text is gone)
        example = f"e.g. ./{value}" if isinstance(value, int) else "with ./ before it"
        raise ValueError(
            f"{key}={value!r}: Hydra read a number, not a path; write it as one, {example}"
        )
    raise ValueError(f"{key}={override_value(value)}: give a path")


def path_of(key: str, value) -> Path:
    """Setting `key`'s path, `~` expanded (`check_path`)."""
    check_path(key, value)
    return Path(value).expanduser()


def check_split(key: str, value) -> None:
    """Raise ValueError naming `key` unless `value` is a split's name (a string): Hydra reads
    `5` as a number and `[train]` as a list, which pathlib refused with a traceback and a dict
    key took unasked."""
    if isinstance(value, str):
        return
    if value is None:
        raise ValueError(
            f"{key}=null: give the split's name (a data set without a validation split: "
            "data.val_fraction holds out a share of data.train's images)"
        )
    raise ValueError(f"{key}={override_value(value)}: give the split's name, a word (train, val)")


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


def override_value(value) -> str:
    """A setting's value as a Hydra override writes it (strings quoted)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):  # Hydra's escapes: a quote, backslashes before a quote or the end
        escaped = re.sub(r"(\\*)('|\Z)", lambda m: 2 * m[1] + "\\" * len(m[2]) + m[2], value)
        return f"'{escaped}'"
    if isinstance(value, Sequence):
        return "[" + ",".join(map(override_value, value)) + "]"
    return repr(value)


BARE = re.compile(r"[A-Za-z_][\w\-]*", re.ASCII)
HYDRA_WORDS = {"true", "false", "null", "inf", "nan"}  # read as other types where bare


def typed_setting(key: str, value) -> str:
    """`key=value` as users type it in a shell, for messages: bare where Hydra and the shell
    read it so (`data.class_names=[head,helmet]`, `model.anchors.sizes=[[16],[32]]`), else in
    double quotes with Hydra's quotes inside (`"data.class_names=['traffic light','café']"`)."""
    text = f"{key}={override_value(value)}"
    if all(bare(leaf) for leaf in leaves(value)):
        return text.replace("'", "")
    return '"' + re.sub(r'(["$`\\])', r"\\\1", text) + '"'


def leaves(value) -> list:
    """The strings, numbers, booleans and None of a value, nested lists flattened."""
    if is_list(value):
        return [leaf for item in value for leaf in leaves(item)]
    return [value]


def is_list(value) -> bool:
    """Whether `value` is a list (a sequence; a string is none): Hydra reads `key=0.9` as a
    number where `key=[0.9]` was meant."""
    return isinstance(value, Sequence) and not isinstance(value, str)


def is_names(value) -> bool:
    """Whether `value` is a list of one or more strings (a bare string is none: a list of
    letters to Python)."""
    return is_list(value) and bool(value) and all(isinstance(name, str) for name in value)


def bare(leaf) -> bool:
    """Whether a leaf reads back as itself unquoted: a number, a boolean, None, or a string of
    word characters that Hydra reads as no other type."""
    if isinstance(leaf, str):
        return bool(BARE.fullmatch(leaf)) and leaf.lower() not in HYDRA_WORDS
    return leaf is None or isinstance(leaf, bool | int | float)
