"""MNIST's images for the peers, read from the gzipped IDX files (the peers do not import npvae).

The folder is ``--data``, else ``$NPVAE_DATA``: the same place ``npvae`` looks first, so that
the peers and npvae read the same files.
"""
import gzip
import os

import numpy as np

IMAGES = ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz")


def read_images(path):
    """The images of one gzipped IDX file as float32 ``(n, rows * cols)`` in [0, 1]."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    magic, n, rows, cols = (int(v) for v in np.frombuffer(raw[:16], dtype=">u4"))
    if magic != 2051:
        raise ValueError(f"{path}: not an IDX image file (magic number {magic}, expected 2051)")
    pixels = np.frombuffer(raw, dtype=np.uint8, offset=16)
    return pixels.reshape(n, rows * cols).astype(np.float32) / 255.0


def load_mnist(folder=None):
    """``(x_train, x_test)``: float32 arrays in [0, 1] of shape ``(n, 784)``."""
    folder = folder or os.environ.get("NPVAE_DATA")
    if not folder:
        raise ValueError("no MNIST folder: pass --data (folder=) or set NPVAE_DATA to the folder holding "
                         + " and ".join(IMAGES))
    missing = [name for name in IMAGES if not os.path.isfile(os.path.join(folder, name))]
    if missing:
        raise ValueError(f"{folder}: missing {', '.join(missing)} (the peers read MNIST's gzipped IDX files)")
    return tuple(read_images(os.path.join(folder, name)) for name in IMAGES)
