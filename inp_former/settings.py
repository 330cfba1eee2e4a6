"""The paper's settings as data choices for the one training loop (docs/behaviour.md, 'Training').

- multi-class: one model on every chosen category of one dataset (the default);
- single-class: one model per category; :func:`single_class_configs` splits a run config into one per
  category (the CLI trains them one after the other into ``RUN_DIR/<category>/``);
- few-shot: ``shots`` normal images sampled per category with the seed, each expanded to the 22
  augmented images of docs/behaviour.md (:class:`FewShotDataset`); one model for all categories;
- super-multi-class: several datasets (``DataConfig.sources``) in one run; their categories are
  named ``<source>/<category>`` so that they never collide;
- zero-shot is an evaluation, not a training setting: a model trained on one dataset evaluated on
  another with ``map_mode="prototype"`` (distance to the nearest INP, no decoder).
"""
from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch
from torch.utils.data import Dataset

from inp_former.categories import REFERENCES_PER_CATEGORY, CategoryReferences, image_embeddings
from inp_former.config import DataConfig, ModelConfig, RunConfig, Setting
from inp_former.errors import ConfigError
from inp_former.data import (LAYOUTS, AnomalyDataset, Sample, build_samples, image_transform, list_categories,
                             load_rgb)
from inp_former.data.transforms import FEW_SHOT_COUNT, few_shot_augmentation

SETTINGS = tuple(s.value for s in Setting)
FEW_SHOTS = (1, 2, 4)   # the paper's; other positive values are allowed


@dataclass(frozen=True)
class Source:
    name: str       # prefix of its categories ("<name>/<category>")
    dataset: str    # layout name (mvtec, visa, realiad, folder, ...)
    root: str


def parse_source(text: str) -> Source:
    """``DATASET=ROOT`` or ``NAME:DATASET=ROOT`` (the command line's ``--source``)."""
    head, sep, root = text.partition("=")
    name, _, dataset = head.rpartition(":")
    dataset = dataset.strip()
    name = name.strip() or dataset
    if not sep or not dataset or not root.strip():
        raise ConfigError(f"source {text!r}: expected DATASET=ROOT (e.g. visa=/data/VisA_pytorch/1cls) "
                          f"or NAME:DATASET=ROOT", arg="source")
    if dataset not in LAYOUTS:
        raise ConfigError(f"source {text!r}: dataset {dataset!r}: expected one of {', '.join(sorted(LAYOUTS))}",
                          arg="source")
    if "/" in name:
        raise ConfigError(f"source {text!r}: the name {name!r} must not contain '/'", arg="source")
    return Source(name, dataset, root.strip())


def with_sources(data: DataConfig, sources: list[Source]) -> DataConfig:
    """``data`` reading ``sources`` (names made unique: visa, visa-2, ...)."""
    seen: dict[str, int] = {}
    stored = []
    for source in sources:
        seen[source.name] = seen.get(source.name, 0) + 1
        name = source.name if seen[source.name] == 1 else f"{source.name}-{seen[source.name]}"
        stored.append({"name": name, "dataset": source.dataset, "root": str(source.root)})
    return dataclasses.replace(data, sources=tuple(stored), dataset="+".join(s["dataset"] for s in stored), root="")


def sources(data: DataConfig) -> list[Source]:
    if data.sources:
        return [Source(s["name"], s["dataset"], s["root"]) for s in data.sources]
    return [Source(data.dataset, data.dataset, data.root)]


def _prefixed(data: DataConfig) -> bool:
    return bool(data.sources)


def available_categories(data: DataConfig) -> list[str]:
    """Every category of the configured data (``<source>/<category>`` with several sources)."""
    if not _prefixed(data):
        return list_categories(data.dataset, data.root)
    return [f"{s.name}/{c}" for s in sources(data) for c in list_categories(s.dataset, s.root)]


def resolve_categories(data: DataConfig) -> list[str]:
    """The chosen categories (all when ``data.categories`` is empty), checked against the data."""
    available = available_categories(data)
    if not data.categories:
        return available
    chosen = []
    for name in data.categories:
        if name in available:
            chosen.append(name)
        elif _prefixed(data) and name in {s.name for s in sources(data)}:  # a whole source: "visa"
            chosen += [c for c in available if c.startswith(name + "/")]
        else:
            where = ", ".join(f"{s.name}={s.root}" for s in sources(data)) if _prefixed(data) else data.root
            raise ConfigError(f"categories: {name} not under {where} (available: {', '.join(available)})",
                              arg="categories")
    return list(dict.fromkeys(chosen))


def _split_category(data: DataConfig, category: str) -> tuple[Source, str]:
    if not _prefixed(data):
        return sources(data)[0], category
    name, sep, raw = category.partition("/")
    for source in sources(data):
        if sep and source.name == name:
            return source, raw
    raise ConfigError(f"category {category!r}: expected <source>/<category> with a source among "
                      f"{', '.join(s.name for s in sources(data))}", arg="category")


def category_samples(data: DataConfig, category: str, split: str) -> list[Sample]:
    """The samples of one (possibly prefixed) category; their ``category`` is the prefixed name."""
    source, raw = _split_category(data, category)
    samples = build_samples(source.dataset, source.root, raw, split)
    if raw == category:
        return samples
    return [dataclasses.replace(s, category=category) for s in samples]


# --- few-shot ----------------------------------------------------------------------------------

def few_shot_selection(data: DataConfig, categories: list[str], shots: int, seed: int) -> dict[str, list[Sample]]:
    """``shots`` training images per category, sampled with ``seed`` (the same for the same files)."""
    if shots < 1:
        raise ConfigError(f"shots {shots}: expected a positive number (the paper uses 1, 2 or 4)", arg="shots")
    chosen = {}
    for category in categories:
        samples = sorted(category_samples(data, category, "train"), key=lambda s: s.path)
        if len(samples) < shots:
            raise ConfigError(f"shots {shots}: category {category} has only {len(samples)} training images",
                              arg="shots")
        rng = random.Random(f"{seed}:{category}")
        chosen[category] = sorted(rng.sample(samples, shots), key=lambda s: s.path)
    return chosen


class FewShotDataset(Dataset):
    """Each few-shot image as its 22 augmented versions (docs/behaviour.md), computed lazily.

    The image is first resized to ``resize`` (as the preprocessing does; an int is a square, a pair
    (height, width)), then augmented, then preprocessed (the resize is then a no-op): the
    augmentations act on the image as the model sees it, whatever its original size or aspect ratio.
    """

    def __init__(self, samples: list[Sample], resize: int | tuple[int, int], crop: int | tuple[int, int]) -> None:
        self.samples = list(samples)
        self.transform = image_transform(resize, crop)
        self.resize = resize
        self._cache: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.samples) * FEW_SHOT_COUNT

    def _base(self, index: int):
        if index not in self._cache:
            from PIL import Image

            image = load_rgb(self.samples[index].path)
            height, width = (self.resize, self.resize) if isinstance(self.resize, int) else self.resize
            self._cache[index] = image.resize((width, height), Image.BILINEAR)
        return self._cache[index]

    def __getitem__(self, index: int) -> dict[str, Any]:
        which, augmentation = divmod(index, FEW_SHOT_COUNT)
        sample = self.samples[which]
        image = self.transform(few_shot_augmentation(self._base(which), augmentation))
        return {"image": image, "mask": torch.zeros(1, *image.shape[-2:]), "label": 0,
                "category": sample.category, "path": f"{sample.path}#aug{augmentation}"}


def is_few_shot(data: DataConfig) -> bool:
    return data.setting == "few-shot" or data.shots > 0


def training_meta(cfg: RunConfig, dataset: Dataset) -> dict[str, Any]:
    """What the checkpoint records about the setting (few-shot: the images drawn)."""
    meta: dict[str, Any] = {"setting": cfg.data.setting}
    if isinstance(dataset, FewShotDataset):
        meta["few_shot_images"] = [s.path for s in dataset.samples]
    if cfg.model.tile is not None:   # the dataset's items are tiles: say how many of how many images
        meta.update(train_images=len(dataset.samples), train_tiles=len(dataset))
    return meta


def training_samples(cfg: RunConfig, categories: list[str]) -> list[Sample]:
    """The training images of the configured setting (few-shot: the selection, before augmentation)."""
    if is_few_shot(cfg.data):
        selection = few_shot_selection(cfg.data, categories, cfg.data.shots, cfg.train.seed)
        return [s for c in categories for s in selection[c]]
    return [s for c in categories for s in category_samples(cfg.data, c, "train")]


def training_dataset(cfg: RunConfig, categories: list[str]) -> Dataset:
    """The training images of the configured setting (few-shot: the augmented selection)."""
    mc = cfg.model
    samples = training_samples(cfg, categories)
    if mc.tile is not None:   # random tiles at the images' own resolution (inp_former/data/tiles.py)
        if is_few_shot(cfg.data):
            raise ConfigError(f"tile {mc.tile}: not with the few-shot setting (its augmentations act on the resized "
                              "image); train tiled models on all normal images", arg="tile", others=("shots",))
        from inp_former.data.tiles import TileDataset

        return TileDataset(samples, [image_hw(s.path) for s in samples], mc.tile, mc.tile_overlap, cfg.train.seed)
    if is_few_shot(cfg.data):
        return FewShotDataset(samples, mc.resize_hw, mc.input_hw)
    return AnomalyDataset(samples, image_transform(mc.resize_hw, mc.input_hw))


# --- keep-aspect: the input size (ModelConfig.keep_aspect) ---------------------------------------

def resolve_input_size(cfg: RunConfig, categories: list[str]) -> tuple[RunConfig, list[str]]:
    """A keep-aspect config with its ``input_size`` read from the training images, and what to tell
    the user (once per run): the size chosen and, as a warning, how many images have another aspect
    ratio and are stretched to it. The input size is the keep-aspect size (:func:`keep_aspect_size`:
    shorter side ``resize``, rounded to the token stride) of the most common image size (the first
    seen on a tie). Any other config, or one resolved already (a resumed run), is returned as it is."""
    from collections import Counter

    from inp_former.data.geometry import keep_aspect_size, stretch_warning

    mc = cfg.model
    if not mc.keep_aspect or mc.input_size is not None:
        return cfg, []
    samples = training_samples(cfg, categories)
    if not samples:
        raise ConfigError("keep_aspect: no training images to read the input size from", arg="keep_aspect")
    sizes = Counter(image_hw(s.path) for s in samples)
    common = sizes.most_common(1)[0][0]
    input_size = keep_aspect_size(common, mc.resize, mc.stride)
    cfg = cfg.updated(model={"input_size": input_size})
    notes = [f"Keep aspect: images are resized to {input_size[0]}x{input_size[1]} px (height x width), from the "
             f"most common training image size {common[0]}x{common[1]}"]
    stretched = sum(count for size, count in sizes.items() if cfg.model.stretches(size))
    if stretched:
        notes.append(stretch_warning(stretched, len(samples), "training", input_size))
    return cfg, notes


def stretched_images(model: ModelConfig, samples: list[Sample]) -> int:
    """How many of ``samples`` a keep-aspect model stretches to its input (0 for a square model;
    only the image headers are read)."""
    return sum(model.stretches(image_hw(s.path)) for s in samples) if model.keep_aspect else 0


def image_hw(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image file, from its header (the pixels are not decoded)."""
    from PIL import Image

    from inp_former.data.transforms import READ_ERRORS
    from inp_former.errors import DatasetError

    try:
        with Image.open(path) as image:
            width, height = image.size
    except READ_ERRORS as exc:
        raise DatasetError(f"{path}: not a readable image ({exc.__class__.__name__})") from exc
    return height, width


# --- category references (inp_former/categories.py) -------------------------------------------

def reference_samples(cfg: RunConfig, category: str, count: int = REFERENCES_PER_CATEGORY) -> list[Any]:
    """The normal training images a category's references are taken from: the few-shot selection
    itself, or ``count`` training images evenly spaced by path (deterministic)."""
    if is_few_shot(cfg.data):
        return few_shot_selection(cfg.data, [category], cfg.data.shots, cfg.train.seed)[category]
    samples = sorted(category_samples(cfg.data, category, "train"), key=lambda s: str(s.path))
    if len(samples) <= count:
        return samples
    step = len(samples) / count
    return [samples[int(i * step)] for i in range(count)]


def compute_references(model: Any, cfg: RunConfig, categories: Iterable[str], device: torch.device | str,
                       count: int = REFERENCES_PER_CATEGORY, batch_size: int = 16) -> CategoryReferences:
    """Embeddings of up to ``count`` normal training images of each category (fp32, eager)."""
    from inp_former.data import load_rgb

    device = torch.device(device)
    transform = image_transform(cfg.model.resize_hw, cfg.model.input_hw)
    model.eval()
    tiled = _tiled_embedding(model, cfg, device, batch_size) if cfg.model.tile is not None else None
    vectors: dict[str, torch.Tensor] = {}
    for category in categories:
        samples = reference_samples(cfg, category, count)
        rows = []
        for start in range(0, len(samples), batch_size):
            chunk = samples[start:start + batch_size]
            if tiled is not None:
                rows.append(torch.stack([tiled(load_rgb(s.path)) for s in chunk]))
                continue
            images = torch.stack([transform(load_rgb(s.path)) for s in chunk]).to(device)
            with torch.no_grad():
                rows.append(image_embeddings(model(images).encoder_groups).cpu())
        if rows:
            vectors[category] = torch.cat(rows)
    return CategoryReferences(vectors)


def _tiled_embedding(model: Any, cfg: RunConfig, device: torch.device, batch_size: int) -> Any:
    """image -> a tiled model's embedding of it: the one its predictions carry (the mean of its
    tiles', :func:`inp_former.tiling.score_image`), in fp32."""
    from inp_former.fast_path import scoring_function
    from inp_former.inference import InferenceConfig
    from inp_former.tiling import score_image, to_uint8_tensor

    scorer = scoring_function(model, cfg, InferenceConfig(precision="fp32", batch_size=batch_size), device)
    return lambda image: score_image(to_uint8_tensor(image), cfg.model, scorer.score, batch_size, device).embedding


# --- single-class ------------------------------------------------------------------------------

def category_dirname(category: str) -> Path:
    """The run sub-directory of a category (``visa/candle`` stays nested)."""
    parts = [p for p in category.split("/") if p not in ("", ".", "..")]
    return Path(*parts) if parts else Path("_")


def single_class_configs(cfg: RunConfig, categories: list[str]) -> list[tuple[str, RunConfig]]:
    """One config per category: the same run, trained on that category only."""
    return [(category, cfg.updated(data={"categories": (category,), "setting": Setting.SINGLE_CLASS}))
            for category in categories]


def check_setting(data: DataConfig) -> None:
    """Refuse inconsistent setting fields with a message naming the flag."""
    if data.setting == Setting.FEW_SHOT and data.shots < 1:
        raise ConfigError("setting few-shot: needs shots N (the paper uses 1, 2 or 4)", arg="setting",
                          others=("shots",))
    if data.shots and data.setting != Setting.FEW_SHOT:
        raise ConfigError(f"shots {data.shots}: only with the few-shot setting (got setting {data.setting})",
                          arg="shots")
    if data.setting == Setting.SUPER_MULTI_CLASS and len(data.sources) < 1:
        raise ConfigError("setting super-multi-class: give the datasets as sources (DATASET=ROOT, several)",
                          arg="setting")


def with_setting(data: DataConfig, setting: Setting | str | None = None, shots: int = 0,
                 sources: list[str] | None = None) -> DataConfig:
    """``data`` with a setting chosen: given, or inferred (``shots`` -> few-shot, ``sources`` ->
    super-multi-class, else multi-class); ``sources`` as ``DATASET=ROOT`` texts. Checked."""
    if sources:
        data = with_sources(data, [parse_source(text) for text in sources])
    if setting is None:
        setting = Setting.FEW_SHOT if shots else Setting.SUPER_MULTI_CLASS if sources else Setting.MULTI_CLASS
    data = dataclasses.replace(data, setting=setting, shots=shots)
    check_setting(data)
    return data
