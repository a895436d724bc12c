"""What `mmrec embed` embeds: one class per modality (item text, item image, review text)."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, cast

import torch
from torch import Tensor

from mmrec.text import clean_html

if TYPE_CHECKING:
    import polars as pl

    from mmrec.content.images import ImageFetcher
    from mmrec.content.models import ContentModel, ImageContentModel

TEXT_RECIPE = "title|brand|categories|description;html-cleaned;v1"
TEXT_COLUMNS = ("title", "brand", "categories", "description")


def clean_text(value: object) -> str:
    """Text of a field for embedding: lists joined with spaces, then
    :func:`mmrec.text.clean_html`; ``""`` when nothing is left."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        value = " ".join(clean_text(v) for v in value)
    return clean_html(str(value)) or ""


def item_text(title: object, brand: object, categories: object, description: object) -> str:
    """The text embedded for an item: ``title. Brand: b. Categories: c. description``.

    Empty parts are skipped; CLIP later truncates to its 77-token context, so the most
    telling fields come first.
    """
    parts = [clean_text(title)]
    if b := clean_text(brand):
        parts.append(f"Brand: {b}")
    if c := clean_text(categories):
        parts.append(f"Categories: {c}")
    parts.append(clean_text(description))
    return ". ".join(p for p in parts if p)


def read_items(dataset: Path, columns: Sequence[str]) -> pl.DataFrame:
    """``items.parquet`` sorted by ``item_idx`` (checked to be exactly ``1..N``), ``columns`` only.

    Raises:
        ValueError: A column is missing or ``item_idx`` is not ``1..N``.
    """
    import polars as pl

    items = pl.read_parquet(dataset / "items.parquet")
    missing = [c for c in ("item_idx", *columns) if c not in items.columns]
    if missing:
        raise ValueError(f"{dataset}/items.parquet lacks columns {missing}; rerun `mmrec prepare`")
    items = items.sort("item_idx")
    idx = items["item_idx"].to_list()
    if idx != list(range(1, len(idx) + 1)):
        raise ValueError(f"{dataset}/items.parquet: item_idx must be exactly 1..N, one row each")
    return items.select(columns)


@dataclass
class Embedded:
    """Vectors of a run of inputs.

    Attributes:
        features: ``[n, D]`` float32; zeros where ``present`` is False.
        present: ``[n]`` bool, False where an input had nothing usable (empty text, no image).
        meta: Extra metadata stored with the shard (per-reason outcome counts...).
    """

    features: Tensor
    present: Tensor
    meta: dict[str, str] = field(default_factory=dict)


class Modality(ABC):
    """One kind of content: its rows, how they are read from a dataset folder and embedded.

    ``mmrec embed`` writes ``<stem>_<name>.safetensors`` with one row per input (plus padding
    row 0) and records ``name`` and ``settings()`` in the fingerprint. Subclasses build without
    arguments when only their inputs are needed (the staleness check of the encoders).
    """

    #: File suffix and the ``modality`` of the fingerprint.
    name: ClassVar[str]

    @abstractmethod
    def load(self, dataset: Path) -> list:
        """Per-row inputs from the dataset folder, padding row excluded."""

    def settings(self) -> dict[str, str]:
        """Fingerprint entries for settings that change the vectors of the same inputs."""
        return {}

    def check_embeddable(self, model: ContentModel) -> None:
        """Raise ``ValueError`` when this modality cannot be embedded with ``model`` (a model
        that lacks the ability, a missing component); default: it can."""
        return None

    @abstractmethod
    def embed(self, model: ContentModel, inputs: list, batch_size: int) -> Embedded:
        """Vectors of ``inputs`` (a slice of ``load``'s list), ``batch_size`` per forward."""

    def report(
        self,
        dataset: Path,
        stem: str,
        shards: list[tuple[int, dict[str, str]]],
        log: Callable[[str], None],
    ) -> None:
        """After all shards: summarise their metadata (``(first row, meta)`` per shard);
        nothing by default."""
        return None


class TextModality(Modality):
    """A modality of texts, embedded with ``model.encode_texts``; empty texts are absent."""

    def embed(self, model: ContentModel, inputs: list, batch_size: int) -> Embedded:
        texts: list[str] = inputs
        present = torch.tensor([bool(t) for t in texts], dtype=torch.bool)  # [n]
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # less padding
        feats = torch.zeros(0)
        for s in range(0, len(texts), batch_size):
            rows = order[s : s + batch_size]
            out = model.encode_texts([texts[i] for i in rows])  # [b, D]
            if feats.numel() == 0:
                feats = torch.zeros(len(texts), out.shape[1])
            feats[rows] = out
        feats[~present] = 0
        return Embedded(feats, present)


class ItemText(TextModality):
    """Item text: cleaned title, brand, categories and description (``item_text``), items 1..N."""

    name = "text"

    def load(self, dataset: Path) -> list[str]:
        rows = read_items(Path(dataset), TEXT_COLUMNS).iter_rows()
        return [item_text(*r) for r in rows]

    def settings(self) -> dict[str, str]:
        return {"text_recipe": TEXT_RECIPE}


class ReviewText(TextModality):
    """The cleaned review of every row of ``interactions.parquet`` (row r -> features row r+1)."""

    name = "review"

    def load(self, dataset: Path) -> list[str]:
        import polars as pl

        df = pl.read_parquet(Path(dataset) / "interactions.parquet", columns=["review"])
        return [clean_text(r) for r in df["review"].to_list()]


class ItemImage(Modality):
    """Item image: the first usable image of each item's ``image_urls``, items 1..N.

    Fetch outcomes per reason go to ``<stem>_image_report.json`` next to the features.

    Args:
        fetcher: Fetches and caches the images; needed to embed, not to ``load``.
        gpu_decode: Decode JPEGs with torchvision on the model's device (nvjpeg) instead of
            PIL; None: when the model runs on CUDA.
    """

    name = "image"

    def __init__(self, fetcher: ImageFetcher | None = None, gpu_decode: bool | None = None):
        self.fetcher = fetcher
        self.gpu_decode = gpu_decode

    def load(self, dataset: Path) -> list[list[str]]:
        urls = read_items(Path(dataset), ["image_urls"])["image_urls"].to_list()
        return [list(u or []) for u in urls]

    def settings(self) -> dict[str, str]:
        """The URL rewrite of the fetcher (none without one: then nothing is embedded)."""
        if self.fetcher is None:
            return {}
        return {"amazon_full_size": str(self.fetcher.amazon_full_size)}

    def check_embeddable(self, model: ContentModel) -> None:
        if not model.embeds_images:
            raise ValueError(f"{model.name} embeds texts only, not images: use a CLIP model")
        if self.fetcher is None:
            raise ValueError("embedding images needs an ImageFetcher: ItemImage(fetcher)")

    def embed(self, model: ContentModel, inputs: list, batch_size: int) -> Embedded:
        from mmrec.content.pixels import embed_images

        self.check_embeddable(model)
        assert self.fetcher is not None  # checked above
        gpu = model.device.type == "cuda" if self.gpu_decode is None else self.gpu_decode
        image_model = cast("ImageContentModel", model)
        feats, present, counts, failures = embed_images(
            image_model, self.fetcher, inputs, batch_size, gpu
        )
        meta = {"counts": json.dumps(dict(counts)), "failures": json.dumps(failures)}
        return Embedded(feats, present, meta)

    def report(
        self,
        dataset: Path,
        stem: str,
        shards: list[tuple[int, dict[str, str]]],
        log: Callable[[str], None],
    ) -> None:
        """Merge the shards' fetch outcomes into ``<stem>_image_report.json`` and log a summary."""
        import polars as pl

        from mmrec.content.outcomes import FetchReport

        items = pl.read_parquet(dataset / "items.parquet", columns=["item_idx", "item_id"])
        ids = items.sort("item_idx")["item_id"].to_list()
        report = FetchReport()
        for start, meta in shards:
            report.counts.update(json.loads(meta["counts"]))
            for fail in json.loads(meta["failures"]):
                row = start + fail.pop("row")
                report.failures.append({"item_idx": row + 1, "item_id": ids[row], **fail})
        path = dataset / "features" / f"{stem}_{self.name}_report.json"
        report.to_json(path)
        log(report.summary() + f" (report: {path})")


#: The built-in modalities by the name their features files record.
BUILTIN: dict[str, type[Modality]] = {cls.name: cls for cls in (ItemText, ItemImage, ReviewText)}


def modality_named(name: str | None) -> Modality | None:
    """The built-in modality a features file records as ``name`` (None when it is not one),
    built without arguments: enough to load its inputs and check the file against a dataset."""
    cls = BUILTIN.get(name or "")
    return cls() if cls is not None else None
