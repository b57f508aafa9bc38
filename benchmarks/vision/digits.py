#!/usr/bin/env python
"""Real images that ship offline, for the image benchmarks: scikit-learn's ``load_digits`` on disk.

1,797 handwritten digits, 8×8 pixels with 17 grey levels (0-16), ten classes. They are written at their own
resolution, scaled to 0-255, as the formats ``compress.data.images`` reads:

* ``OUT/train/<digit>/<index>.png`` and ``OUT/test/<digit>/<index>.png``: class folders, one PNG per image;
* ``OUT/train.npz`` and ``OUT/test.npz``: ``images`` (N×8×8 uint8) and ``labels`` (N int64).

The split is fixed: stratified by class, 20% test, seed 0 (``sklearn.model_selection.train_test_split``), so every
benchmark and every session sees the same test images. Upscaling to what a model needs (e.g. 32×32, bilinear) is the
model's preprocessing (``ImagePreprocess``), not the data's. scikit-learn is a benchmark dependency only
(``pip install scikit-learn``). ``OUT/split.json`` records the indices, counts and versions.

    python benchmarks/vision/digits.py [--out benchmarks/.cache/digits]

Afterwards every image is read back through ``compress.data.images.load_image_dataset`` and checked against the
source arrays, so the files are known to be what the loaders give the models.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=HERE / ".cache" / "digits")
    ap.add_argument("--test-size", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import sklearn
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from compress.data.images import load_image_dataset

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # 0-16 grey levels -> 0-255
    labels = digits.target.astype(np.int64)
    idx_train, idx_test = train_test_split(np.arange(len(labels)), test_size=args.test_size, random_state=args.seed,
                                           stratify=labels)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    names = [str(d) for d in range(10)]
    label2id = {n: i for i, n in enumerate(names)}
    for split, idx in (("train", np.sort(idx_train)), ("test", np.sort(idx_test))):
        np.savez(out / f"{split}.npz", images=images[idx], labels=labels[idx])
        for i in idx:
            path = out / split / names[labels[i]] / f"{i:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i]).save(path)  # 2-D uint8: an 8-bit grey ("L") image
        # read back through the loaders the pipeline uses
        folder = load_image_dataset(out / split, label2id=label2id, require_labels=True)
        arrays = load_image_dataset(out / f"{split}.npz", label2id=label2id, require_labels=True)
        assert len(folder) == len(arrays) == len(idx)
        by_file = {int(Path(p).stem): (np.asarray(Image.open(p)), lab) for p, lab in zip(folder.items, folder.labels)}
        for i, arr, lab in zip(idx, arrays.items, arrays.labels):
            png, png_lab = by_file[int(i)]
            assert np.array_equal(png, images[i]) and np.array_equal(arr, images[i]) and lab == png_lab == labels[i]
    info = {
        "source": "sklearn.datasets.load_digits", "sklearn": sklearn.__version__, "images": int(len(labels)),
        "shape": list(images.shape[1:]), "scale": "round(x * 255 / 16)", "test_size": args.test_size,
        "seed": args.seed, "stratified": True, "train": int(len(idx_train)), "test": int(len(idx_test)),
        "per_class": {"train": np.bincount(labels[idx_train], minlength=10).tolist(),
                      "test": np.bincount(labels[idx_test], minlength=10).tolist()},
        "test_indices": sorted(int(i) for i in idx_test),
    }
    (out / "split.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"wrote {out}: {info['train']} train / {info['test']} test images, 8x8 grey, read back and verified",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
