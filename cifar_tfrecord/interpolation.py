"""Bilinear upsampling as two products with fixed matrices.

`tf.image.resize(..., 'bilinear')` (half-pixel centres) gives wrong values
under XLA in TensorFlow 2.21: where a sample falls exactly on a source pixel,
XLA takes the next one (tensorflow/tensorflow#118344, #118467). XLA is on by
default on GPUs, so a model upsampling with it would train on other images
than its exported SavedModel, which runs without XLA, is given. The same
interpolation written as matrix products is computed exactly by any backend.
The host pipeline, which XLA never compiles, keeps TensorFlow's resize,
faster there; the two agree to float32 rounding.

Numpy only: the model builds its layers from it, and tests compare it with
TensorFlow's resize.
"""

import numpy as np


def bilinear_matrix(source: int, target: int) -> np.ndarray:
    """The [target, source] weights of bilinear interpolation along one axis.

    Row i holds the weights of the source pixels for target pixel i, as
    TensorFlow's bilinear resize computes them with half-pixel centres (no
    antialiasing, which only a reduction would use): the target pixel's
    centre mapped into the source, clamped to its edge pixels, between its
    two neighbours.
    """
    position = (np.arange(target) + 0.5) * (source / target) - 0.5
    lower = np.clip(np.floor(position), 0, source - 1).astype(int)
    upper = np.clip(np.ceil(position), 0, source - 1).astype(int)
    fraction = position - np.floor(position)
    matrix = np.zeros((target, source), np.float32)
    rows = np.arange(target)
    np.add.at(matrix, (rows, lower), 1 - fraction)
    np.add.at(matrix, (rows, upper), fraction)
    return matrix


# Images [batch, height, width, channels] times a [target, source] matrix,
# along the height, then along the width.
ALONG_HEIGHT = 'bhwc,th->btwc'
ALONG_WIDTH = 'bhwc,tw->bhtc'
