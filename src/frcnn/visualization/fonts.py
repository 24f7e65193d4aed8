"""The font that class names are drawn in: DejaVu Sans where it has all their characters, else
an installed font that has them (Chinese, Japanese or Korean names: Noto Sans CJK, ...), chosen
once for the pictures (PIL) and the figures (matplotlib)."""

import functools
import logging
import threading
import warnings
from pathlib import Path

import matplotlib
from matplotlib import font_manager

log = logging.getLogger(__name__)

# matplotlib ships it, so it is there wherever the project runs
DEJAVU_SANS = str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf")
# what a font must have beside the characters it is chosen for: the rest of a label (scores)
ASCII = frozenset(range(0x20, 0x7F))
# matplotlib's last-resort font has a placeholder box for every character: no better than none
PLACEHOLDER_FONTS = ("Last Resort",)
CHOOSING = threading.Lock()


def label_font(class_names: list[str] | None) -> str:
    """The font file for labels made of `class_names` and scores: DejaVu Sans where it has all
    their characters, else the first installed font that has those it lacks, and ASCII (regular
    sans-serif faces first), which also becomes matplotlib's fallback so that the figures show
    the names too. Where no font has them, DejaVu Sans, and one warning that says what to
    install."""
    return names_font(tuple(class_names or ()))


@functools.cache
def names_font(class_names: tuple[str, ...]) -> str:
    """label_font, once for each list of names (asked for every picture drawn: LVIS's 1203
    names are 18,000 characters to look up)."""
    used = {ord(c) for c in "".join(class_names) if c.isprintable()}
    lacking = used - font_manager.get_font(DEJAVU_SANS).get_charmap().keys()
    if not lacking:
        return DEJAVU_SANS
    with CHOOSING:  # predict.py draws its pictures in threads: one choice, one log line
        return font_for(frozenset(lacking))


@functools.cache
def font_for(lacking: frozenset[int]) -> str:
    """label_font's choice for characters `lacking` in DejaVu Sans (once for each set: a
    report's figures and every picture of a run ask for the same)."""
    shown = " ".join(chr(c) for c in sorted(lacking)[:20]) + (" ..." if len(lacking) > 20 else "")
    known = {entry.fname for entry in font_manager.fontManager.ttflist}
    for entry in installed_fonts():
        if lacking | ASCII <= font_manager.get_font(entry.fname).get_charmap().keys():
            if entry.fname not in known:  # installed since matplotlib made its font cache
                font_manager.fontManager.addfont(entry.fname)
            family = list(matplotlib.rcParams["font.family"])
            if entry.name not in family:  # matplotlib draws what the first font lacks in this
                matplotlib.rcParams["font.family"] = [*family, entry.name]
            log.info("Class names with %s: drawn in %s (%s)", shown, entry.name, entry.fname)
            return entry.fname
    log.warning(
        "The class names have characters that no installed font has (%s): pictures and figures "
        "draw them as boxes. Install a font that has them (Chinese, Japanese, Korean: Noto Sans "
        "CJK, e.g. `apt install fonts-noto-cjk`); the next run finds it",
        shown,
    )
    # said once above: not again for every character of every figure
    warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font")
    return DEJAVU_SANS


def installed_fonts() -> list[font_manager.FontEntry]:
    """The fonts matplotlib knows and those installed since it made its font cache, regular
    sans-serif faces first, without placeholder fonts."""
    known = font_manager.fontManager.ttflist
    seen = {entry.fname for entry in known}
    new = []
    for path in sorted(set(font_manager.findSystemFonts()) - seen):
        try:
            new.append(font_manager.ttfFontProperty(font_manager.get_font(path)))
        except (OSError, RuntimeError, ValueError):  # not a font matplotlib can read
            continue
    fonts = [e for e in known + new if not e.name.startswith(PLACEHOLDER_FONTS)]
    return sorted(fonts, key=lambda e: (
        e.style != "normal",
        e.weight not in (400, "normal", "regular"),
        "sans" not in e.name.lower(),
        e.name,
    ))  # fmt: skip
