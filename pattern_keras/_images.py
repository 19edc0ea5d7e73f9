"""Image files for the command line: a folder of images or one image, read in batches.

``pattern-keras fit`` streams a folder through :class:`ImageBatches` (a ``keras.utils.PyDataset``
that reads ``batch_size`` files per batch), so its memory does not grow with the number of
images; ``analyze`` reads all of its inputs with :func:`read_images`, since it keeps every
explanation anyway.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_COLOR_MODES = {1: "grayscale", 3: "rgb", 4: "rgba"}


class ImageError(ValueError):
    """An image that cannot be read, or images that do not fit together or the model."""


def is_image_file(path: str) -> bool:
    """Whether ``path`` is a file with an image extension (PNG or JPEG)."""
    return os.path.isfile(path) and path.lower().endswith(IMAGE_EXTENSIONS)


def list_images(path: str) -> tuple[list[str], list[str]]:
    """The image files of a folder (sorted by name), or ``[path]`` for one image file.

    Returns ``(files, names)``: full paths, and one output name per file (the file's stem; the
    whole file name with dots replaced where two stems collide).
    """
    if os.path.isdir(path):
        names = sorted(
            f
            for f in os.listdir(path)
            if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")
        )
        if not names:
            raise ImageError(f"folder '{path}' holds no PNG or JPEG images")
        files = [os.path.join(path, f) for f in names]
    else:
        files, names = [path], [os.path.basename(path)]
    stems = [os.path.splitext(f)[0] for f in names]
    if len(set(stems)) != len(stems):
        stems = [f.replace(".", "_") for f in names]
    return files, stems


def color_mode(channels: int) -> str:
    """The ``keras.utils.load_img`` colour mode giving ``channels`` channels."""
    if channels not in _COLOR_MODES:
        raise ImageError(f"the model expects {channels} channels; images can give 1, 3 or 4")
    return _COLOR_MODES[channels]


def read_image(file: str, mode: str, size: Sequence[int] | None) -> np.ndarray:
    """One image as float32 ``(H, W, C)``, values 0..255, resized to ``size`` when given."""
    import keras

    try:
        img = keras.utils.load_img(
            file, color_mode=mode, target_size=None if size is None else tuple(size)
        )
    except Exception as err:  # PIL raises several types for broken files
        text = " ".join(str(err).split()) or type(err).__name__
        raise ImageError(f"could not read image '{file}': {text}") from None
    return keras.utils.img_to_array(img, data_format="channels_last", dtype="float32")


def read_images(files: Sequence[str], mode: str, size: Sequence[int] | None) -> np.ndarray:
    """Several images stacked to ``(N, H, W, C)`` float32; refuses images of different sizes."""
    images: list[np.ndarray] = []
    for file in files:
        array = read_image(file, mode, size)
        if images and array.shape != images[0].shape:
            raise ImageError(_size_mismatch(files[0], images[0], file, array))
        images.append(array)
    return np.stack(images)


def check_same_size(files: Sequence[str]) -> None:
    """Refuse images of different sizes before a streamed fit starts.

    Reads only the file headers (PIL opens lazily), so a folder of thousands of images is
    checked in a moment without decoding them.
    """
    from PIL import Image

    first = None
    for file in files:
        try:
            with Image.open(file) as img:
                size = img.size  # (W, H)
        except Exception as err:  # PIL raises several types for broken files
            text = " ".join(str(err).split()) or type(err).__name__
            raise ImageError(f"could not read image '{file}': {text}") from None
        if first is None:
            first = (file, size)
        elif size != first[1]:
            raise ImageError(
                f"images have different sizes ({os.path.basename(first[0])}: "
                f"{first[1][0]}x{first[1][1]}, {os.path.basename(file)}: {size[0]}x{size[1]}): "
                "give --image-size H W"
            )


def _size_mismatch(first: str, a: np.ndarray, other: str, b: np.ndarray) -> str:
    return (
        f"images have different sizes ({os.path.basename(first)}: {a.shape[1]}x{a.shape[0]}"
        f", {os.path.basename(other)}: {b.shape[1]}x{b.shape[0]}): give --image-size H W"
    )


def _pydataset_base():
    import keras

    return keras.utils.PyDataset


class ImageBatches(_pydataset_base()):
    """A ``keras.utils.PyDataset`` reading ``batch_size`` image files per batch.

    Parameters
    ----------
    files : sequence of str
        Image files, in order.
    batch_size : int
        Files per batch (the last batch may be smaller).
    mode : {"grayscale", "rgb", "rgba"}
        Colour mode of every image.
    size : (int, int), optional
        ``(H, W)`` to resize to. Without it every image must have the first image's size.
    transform : callable, optional
        Applied to each float32 batch ``(n, H, W, C)`` (preprocessing, a shape check).

    Notes
    -----
    Only the current batch is in memory: a fit over a folder needs the same memory for 200 or
    20,000 images. Batches are read in the calling thread (no workers), in order.
    """

    def __init__(
        self,
        files: Sequence[str],
        batch_size: int,
        mode: str,
        size: Sequence[int] | None = None,
        transform: Callable[[np.ndarray], Any] | None = None,
    ) -> None:
        super().__init__()
        self.files = list(files)
        self.batch_size = int(batch_size)
        self.mode = mode
        self.size = None if size is None else tuple(int(v) for v in size)
        self.transform = transform
        self._first_shape: tuple[int, ...] | None = None

    def __len__(self) -> int:
        return -(-len(self.files) // self.batch_size)

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(index)
        chunk = self.files[index * self.batch_size : (index + 1) * self.batch_size]
        batch = read_images(chunk, self.mode, self.size)
        if self._first_shape is None:
            self._first_shape = batch.shape[1:]
        elif batch.shape[1:] != self._first_shape:
            raise ImageError(
                f"images have different sizes ({os.path.basename(self.files[0])}: "
                f"{self._first_shape[1]}x{self._first_shape[0]}, {os.path.basename(chunk[0])}: "
                f"{batch.shape[2]}x{batch.shape[1]}): give --image-size H W"
            )
        return batch if self.transform is None else self.transform(batch)
