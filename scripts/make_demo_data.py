"""Write the small generated datasets the ``*_demo`` experiments run on, in the real on-disk formats.

Under ``<dir>`` (default ``$GEAL_DATA_DIR/demo``, i.e. ``data/demo``): ``VOCdevkit/`` (VOC2007 + VOC2012
trainval and VOC2007 test: JPEGs, XML annotations, ImageSets), ``cityscapes/`` (leftImg8bit + gtFine,
train / val) and ``oxford-iiit-pet/`` (images, annotations, trimaps) — read by the same loaders as the real
datasets (downstream.datasets.synthetic writes them). Existing datasets are left alone (``--force``
rewrites them).

Usage: python scripts/make_demo_data.py [--dir data/demo] [--force]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
from pathlib import Path

from downstream.datasets import synthetic

log = logging.getLogger("make_demo_data")


def main() -> None:
    default = Path(os.environ.get("GEAL_DATA_DIR", "data")) / "demo"
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dir", type=Path, default=default, help=f"where to write (default: {default})")
    parser.add_argument("--force", action="store_true", help="rewrite datasets that exist")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out: Path = args.dir
    jobs = {
        # 120 trainval images (every 6th without objects) of 6 classes, 40 test images
        "VOCdevkit": lambda: synthetic.make_voc(
            out,
            n07=70,
            n12=50,
            n07_test=40,
            classes=["aeroplane", "bicycle", "bird", "car", "cat", "dog"],
            max_objects=3,
            max_overlap=0.3,
        ),
        "cityscapes": lambda: synthetic.make_cityscapes(out / "cityscapes", n_train=80, n_val=20),
        # 6 breeds x 40 images: 120 trainval, 120 test
        "oxford-iiit-pet": lambda: synthetic.make_pets(out, n_per_class=40, n_classes=6),
    }
    for name, make in jobs.items():
        target = out / name
        if target.exists() and not args.force:
            log.info("%s exists: kept (--force rewrites it)", target)
            continue
        if target.exists():
            shutil.rmtree(target)
        make()
        log.info("wrote %s", target)
    print(f"demo datasets under {out}: run e.g. geal-run -m experiment=paper_voc_demo")  # the CLI's output


if __name__ == "__main__":
    main()
