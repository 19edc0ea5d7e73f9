"""Image files for the command line: a folder of images or one image, read in batches.

``pattern-keras fit`` streams a folder through :class:`ImageBatches` (a ``keras.utils.PyDataset``
that reads ``batch_size`` files per batch), so its memory does not grow with the number of
images; ``analyze`` reads all of its inputs with :func:`read_images`, since it keeps every
explanation anyway.

Values are 0..255 whatever the file's bit depth: 8-bit images as read, 16-bit PNGs read at their
full depth and scaled by 255 / 65535 (so 65535 is 255.0, with the fractions kept), so that
``--preprocess`` means the same for both.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_COLOR_MODES = {1: "grayscale", 3: "rgb", 4: "rgba"}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: ITU-R 601-2 luma, the weights Pillow's RGB → L conversion uses.
_LUMA = (0.299, 0.587, 0.114)


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
    """One image as float32 ``(H, W, C)``, values 0..255, resized to ``size`` when given.

    A 16-bit PNG is read at its depth (:func:`read_png16`); other images by
    ``keras.utils.load_img`` (Pillow), resized with nearest-neighbour sampling.
    """
    import keras

    if png_bit_depth(file) == 16:
        return read_png16(file, mode, size)
    try:
        img = keras.utils.load_img(
            file, color_mode=mode, target_size=None if size is None else tuple(size)
        )
        # Pillow decodes lazily: a file truncated after its header fails here, not above.
        return keras.utils.img_to_array(img, data_format="channels_last", dtype="float32")
    except Exception as err:  # PIL raises several types for broken files
        text = " ".join(str(err).split()) or type(err).__name__
        raise ImageError(f"could not read image '{file}': {text}") from None


def png_bit_depth(file: str) -> int | None:
    """The bit depth per channel a PNG file's header declares; ``None`` for another file."""
    try:
        with open(file, "rb") as f:
            head = f.read(26)
    except OSError:
        return None  # reported by the reader
    if len(head) < 26 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        return None
    return head[24]


def read_png16(file: str, mode: str, size: Sequence[int] | None) -> np.ndarray:
    """A 16-bit PNG as float32 ``(H, W, C)``, scaled to 0..255 by 255 / 65535.

    Pillow reads such files at 8 bits (RGB) or as unscaled 32-bit integers that its colour
    conversions clip to 0..255 (grayscale), so TensorFlow's PNG decoder reads them here. The
    colour mode is converted as Pillow does for 8-bit images: grey to colour by repeating it,
    colour to grey by ITU-R 601-2 luma, alpha dropped, or added as opaque (255); resizing is
    Pillow's nearest neighbour, as ``keras.utils.load_img``'s.
    """
    import tensorflow as tf

    try:
        raw = tf.io.decode_png(tf.io.read_file(file), channels=0, dtype=tf.uint16).numpy()
    except Exception as err:  # TensorFlow raises its own types for broken files
        text = " ".join(str(err).split()) or type(err).__name__
        raise ImageError(f"could not read image '{file}': {text}") from None
    values = (raw.astype(np.float64) * (255.0 / 65535.0)).astype(np.float32)
    image = _convert_channels(values, mode)
    if size is not None and tuple(size) != image.shape[:2]:
        image = _resize_nearest(image, tuple(int(v) for v in size))
    return image


def _convert_channels(values: np.ndarray, mode: str) -> np.ndarray:
    """``(H, W, C)`` with C = 1 (grey), 2 (grey, alpha), 3 (RGB) or 4 (RGBA), in ``mode``."""
    channels = values.shape[-1]
    alpha = values[..., -1:] if channels in (2, 4) else None
    colour = values[..., :-1] if alpha is not None else values
    if mode == "grayscale":
        if colour.shape[-1] == 1:
            return colour
        luma = sum(w * colour[..., i].astype(np.float64) for i, w in enumerate(_LUMA))
        return luma[..., None].astype(np.float32)
    rgb = np.repeat(colour, 3, axis=-1) if colour.shape[-1] == 1 else colour
    if mode == "rgb":
        return rgb
    if alpha is None:
        alpha = np.full(rgb.shape[:-1] + (1,), 255.0, np.float32)
    return np.concatenate([rgb, alpha], axis=-1)


def _resize_nearest(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Pillow's nearest-neighbour resize, channel by channel on 32-bit float images."""
    from PIL import Image

    height, width = size
    planes = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(image[..., c])).resize(
                (width, height), Image.NEAREST
            )
        )
        for c in range(image.shape[-1])
    ]
    return np.stack(planes, axis=-1).astype(np.float32)


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
