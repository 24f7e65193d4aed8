"""The font of the class names: DejaVu Sans, else an installed font that has their characters,
else one warning; pictures and figures alike."""

import io
import logging
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from fontTools.fontBuilder import FontBuilder  # matplotlib's own dependency
from fontTools.pens.ttGlyphPen import TTGlyphPen
from matplotlib import font_manager

from frcnn.visualization.drawing import draw_labels, named_boxes
from frcnn.visualization.fonts import DEJAVU_SANS, label_font
from frcnn.visualization.report_figures import confusion_figure

HANZI = ["安全帽", "反光衣 vest"]  # a helmet, a safety vest: characters DejaVu Sans lacks


def test_names_dejavu_sans_draws_are_drawn_in_it(only_matplotlibs_fonts, caplog):
    names = ["person", "Straße", "ελέφαντας", "собака", "café au lait"]
    with caplog.at_level(logging.INFO, "frcnn.visualization.fonts"):
        assert label_font(names) == label_font(None) == DEJAVU_SANS
    assert not caplog.records


def test_names_no_font_has_are_warned_of_once_for_pictures_and_figures(
    only_matplotlibs_fonts, caplog
):
    """Matplotlib's warning for each missing character of each figure is left out."""
    image = torch.zeros(3, 64, 96, dtype=torch.uint8)
    target = {"boxes": torch.tensor([[4.0, 4.0, 90.0, 60.0]]), "labels": torch.tensor([1])}
    with (
        caplog.at_level(logging.INFO, "frcnn.visualization.fonts"),
        warnings.catch_warnings(record=True) as shown,
    ):
        warnings.simplefilter("always")
        drawn = draw_labels(image, target, HANZI)
        confusion(HANZI).savefig(io.BytesIO(), format="png")
        assert label_font([*HANZI, "person"]) == DEJAVU_SANS  # (the same characters lacking)
    assert torch.equal(drawn, named_boxes(image, target["boxes"], [HANZI[0]], [1], DEJAVU_SANS))
    (record,) = caplog.records
    assert record.levelname == "WARNING"
    assert "characters that no installed font has (光 全 反 安 帽 衣)" in record.message
    assert "fonts-noto-cjk" in record.message
    assert not [w for w in shown if "missing from font" in str(w.message)]


def test_pictures_drawn_in_threads_choose_the_font_once(only_matplotlibs_fonts, caplog):
    """predict.py draws its pictures in threads: its first ones ask at the same time."""
    with caplog.at_level(logging.INFO, "frcnn.visualization.fonts"), ThreadPoolExecutor(8) as pool:
        fonts = list(pool.map(lambda _: label_font(HANZI), range(8)))
    assert fonts == [DEJAVU_SANS] * 8
    assert len(caplog.records) == 1, [r.message for r in caplog.records]


def test_names_dejavu_sans_lacks_are_drawn_in_an_installed_font_that_has_them(
    only_matplotlibs_fonts, tmp_path, caplog
):
    """A font installed since matplotlib made its font cache, with the names' characters (and
    ASCII): the labels are drawn in it, and the figures draw what DejaVu Sans lacks in it."""
    font = hanzi_font(tmp_path / "TestHanziSans-Regular.ttf", "".join(HANZI))
    installed = [str(font)]
    only_matplotlibs_fonts.setattr(font_manager, "findSystemFonts", lambda *a, **k: installed)
    image = torch.zeros(3, 480, 1280, dtype=torch.uint8)  # labels 20 px high
    target = {"boxes": torch.tensor([[4.0, 4.0, 600.0, 400.0]]), "labels": torch.tensor([1])}
    with (
        caplog.at_level(logging.INFO, "frcnn.visualization.fonts"),
        warnings.catch_warnings(record=True) as shown,
    ):
        warnings.simplefilter("always")
        assert label_font(HANZI) == str(font)
        drawn = draw_labels(image, target, HANZI)
        confusion(HANZI).savefig(io.BytesIO(), format="png")
    assert not [w for w in shown if "missing from font" in str(w.message)]
    assert [r.message for r in caplog.records] == [
        f"Class names with 光 全 反 安 帽 衣: drawn in Test Hanzi Sans ({font})"
    ]
    # its glyphs are filled squares: more text pixels (white, on class 1's blue) than DejaVu's
    # empty boxes for them
    tofu = named_boxes(image, target["boxes"], [HANZI[0]], [1], DEJAVU_SANS)
    text_pixels = [int((d > 160).all(0).sum()) for d in (drawn, tofu)]
    assert text_pixels[0] > 2 * text_pixels[1] > 0, text_pixels


def confusion(names: list[str]):
    matrix = torch.tensor([[3, 1, 0], [0, 2, 1], [1, 0, 0]])
    return confusion_figure(matrix, [*names, "background"], share=False, score=0.5)


def hanzi_font(path: Path, characters: str) -> Path:
    """A TrueType font "Test Hanzi Sans" whose glyphs for ASCII and `characters` are filled
    squares (a space is empty)."""
    drawn = {ord(c): f"u{ord(c):04X}" for c in {*map(chr, range(0x21, 0x7F)), *characters}}
    pen = TTGlyphPen(None)
    pen.moveTo((100, 0))
    pen.lineTo((100, 700))
    pen.lineTo((900, 700))
    pen.lineTo((900, 0))
    pen.closePath()
    square = pen.glyph()
    builder = FontBuilder(1000, isTTF=True)
    order = [".notdef", "space", *drawn.values()]
    builder.setupGlyphOrder(order)
    builder.setupCharacterMap({0x20: "space", **drawn})
    builder.setupGlyf({name: square if name in drawn.values() else TTGlyphPen(None).glyph()
                       for name in order})  # fmt: skip
    builder.setupHorizontalMetrics({name: (1000, 100) for name in order})
    builder.setupHorizontalHeader(ascent=800, descent=-200)
    builder.setupNameTable({"familyName": "Test Hanzi Sans", "styleName": "Regular"})
    builder.setupOS2(sTypoAscender=800, sTypoDescender=-200, usWinAscent=800, usWinDescent=200)
    builder.setupPost()
    builder.save(str(path))
    return path
