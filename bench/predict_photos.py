"""Photos of several sizes for timing predict.py on large inputs (decode, resize, draw, encode).

    uv run python bench/predict_photos.py /tmp/photos   # 16 of 4000 x 3000, 32 of 1920 x 1080

Blurred noise saved as JPEG at quality 90 (2-4 MB for 12 MP, as phone photos are), each turned
a little so that no two files are the same. Not a test; the commands that time predict.py on
them, and the figures, are in bench/README.md ("predict.py on large photos").
"""

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

SETS = {(4000, 3000): 16, (1920, 1080): 32}


def main(root: Path) -> None:
    rng = np.random.default_rng(0)
    for (width, height), count in SETS.items():
        folder = root / f"{width}x{height}"
        folder.mkdir(parents=True, exist_ok=True)
        noise = rng.integers(0, 255, (height // 8, width // 8, 3), dtype=np.uint8)
        base = Image.fromarray(noise).resize((width, height)).filter(ImageFilter.GaussianBlur(3))
        for i in range(count):
            base.rotate(i * 7).save(folder / f"{i}.jpg", quality=90)
        print(f"{folder}: {count} photos")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "photos"))
