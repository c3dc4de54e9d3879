"""Datasets: where images come from, how untrusted files are checked, split and decoded.

Submodules, one concern each: `sources` (dataset references, demo world, torchvision downloads),
`folders` (scanning and splitting ImageFolder layouts), `zips` (safe extraction of uploads),
`images` (one untrusted image), `tensors` (preprocessing, decoded-image cache, normalisation),
`dataset` (the `Dataset` the rest of the code reads), `demo` (the generated demo world).
"""

from core.config import dataset_name
from core.data.dataset import Dataset, DatasetError, Progress, Sample
from core.data.folders import SPLIT_NAMES, load_folder
from core.data.images import (
    IMAGE_EXTENSIONS,
    IMAGE_FORMATS,
    MAX_IMAGE_PIXELS,
    open_image,
    preview,
)
from core.data.sources import (
    DEMO_DATASETS,
    TORCHVISION_DATASETS,
    demo_ref,
    load_dataset,
    parse_demo_ref,
    prepare_dataset,
)
from core.data.tensors import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocess,
    decode_images,
    decode_key,
    decode_one,
    image_tensor,
    normalize,
    preprocess_for,
)
from core.data.zips import import_zip

__all__ = [
    "DEMO_DATASETS", "IMAGENET_MEAN", "IMAGENET_STD", "IMAGE_EXTENSIONS", "IMAGE_FORMATS", "MAX_IMAGE_PIXELS",
    "SPLIT_NAMES", "TORCHVISION_DATASETS", "Dataset", "DatasetError", "Preprocess", "Progress", "Sample",
    "dataset_name", "decode_images", "decode_key", "decode_one", "demo_ref", "image_tensor", "import_zip",
    "load_dataset", "load_folder", "normalize", "open_image", "parse_demo_ref", "prepare_dataset",
    "preprocess_for", "preview",
]
