"""Time and peak memory of the tile merge (`inference/tiles.merge`) on a large image's detections.

    for side in 4000 8000; do uv run python bench/tile_merge.py $side; done
    uv run python bench/tile_merge.py 12000 --most 100

Detections as `predict.py tile=640 tile_overlap=0.2` gives them on a side x 3/4 side image: 100
a tile (the default `max_detections`), 5-65 px, inside their tile, 10% cut at a tile side, 2
classes. One image per process, so that the peak memory is the merge's (torch alone: about
0.54 GB). Not a test; the figures are in bench/README.md ("Tiles: the merge").
"""

import argparse
import resource
import time

import torch

from frcnn.inference.tiles import merge, tile_windows


def detections(side: int, per_tile: int = 100) -> tuple[torch.Tensor, ...]:
    """-> boxes (N, 4), scores, labels, cut, and the number of tiles."""
    torch.manual_seed(0)
    windows = tile_windows(side, side * 3 // 4, 640, 0.2)
    boxes = []
    for x0, y0, x1, y1 in windows:
        xy = torch.rand(per_tile, 2) * torch.tensor([x1 - x0 - 20, y1 - y0 - 20])
        xy += torch.tensor([x0, y0])
        wh = torch.rand(per_tile, 2) * 60 + 5
        boxes.append(torch.cat([xy, (xy + wh).minimum(torch.tensor([x1, y1]))], 1))
    boxes = torch.cat(boxes)
    count = len(boxes)
    return (
        boxes,
        torch.rand(count),
        torch.randint(1, 3, (count,)),
        torch.rand(count) < 0.1,
        len(windows),
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("side", type=int, help="the image's width; its height is 3/4 of it")
    parser.add_argument("--most", type=int, default=None, help="merge's `most` (none: all)")
    args = parser.parse_args()
    boxes, scores, labels, cut, tiles = detections(args.side)
    started = time.perf_counter()
    most = {} if args.most is None else {"most": args.most}  # (none: as merge did before)
    kept = merge(boxes, scores, labels, cut, **most)[0]
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # (kB on Linux)
    print(
        f"{args.side} x {args.side * 3 // 4}: {tiles} tiles, {len(boxes)} detections, "
        f"{len(kept)} kept (most={args.most}): {seconds:.2f} s, peak memory {peak:.2f} GB"
    )


if __name__ == "__main__":
    main()
