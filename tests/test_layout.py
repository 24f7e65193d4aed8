"""The README's table of how the code is laid out names every module of `src/frcnn`, and only
modules that are there: a module added, moved or renamed without its row fails here."""

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]


def layout_table() -> dict[str, list[str]]:
    """{first cell: the names it gives} of the rows of the README's "How the code is laid out"
    table; a cell's later names (`coco_folder.py`) are in its first name's folder."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## How the code is laid out\n")[1].split("\n## ")[0]
    rows = {}
    for cell in re.findall(r"^\| (`[^|]+`) \|", section, re.M):
        first, *others = re.findall(r"`([^`]+)`", cell)
        folder = first if first.endswith("/") else first.rpartition("/")[0] + "/"
        rows[cell] = [first, *(folder + name for name in others)]
    return rows


def test_the_layout_table_names_every_module_and_no_other():
    named = [name for names in layout_table().values() for name in names]
    assert "src/frcnn/data/coco_folder.py" in named  # (a later name of a cell, in its folder)
    missing = [name for name in named if not (ROOT / name).exists()]
    assert not missing, f"the README's layout table names what is not there: {missing}"
    folders = tuple(name for name in named if name.endswith("/"))
    modules = sorted(
        str(path.relative_to(ROOT))
        for path in (ROOT / "src" / "frcnn").rglob("*.py")
        if path.name != "__init__.py"
    )
    unnamed = [m for m in modules if m not in named and not m.startswith(folders)]
    assert not unnamed, f"modules the README's layout table leaves out: {unnamed}"
