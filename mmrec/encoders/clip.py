"""CLIP text and image item encoders: cached frozen features, or CLIP itself fine-tuned."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor

from mmrec.content.inputs import ItemImage, ItemText, Modality
from mmrec.encoders.base import BuildContext
from mmrec.encoders.features import CachedFeatureEncoder


class _CLIPEncoder(CachedFeatureEncoder):
    """Shared logic of the CLIP encoders; see ``CLIPTextEncoder`` for the arguments."""

    modality: ClassVar[type[Modality]] = ItemText

    def __init__(
        self,
        name: str | None = None,
        path: str | None = None,
        hidden: int = 0,
        layer_norm: bool = True,
        dropout: float = 0.0,
        normalize: bool = True,
        check_fingerprint: bool = True,
        finetune: bool = False,
        model: str | None = None,
        download_root: str | None = None,
        image_cache: str | None = None,
        chunk_size: int = 256,
    ) -> None:
        super().__init__(
            name or f"clip_{self.modality.name}",
            path,
            hidden,
            layer_norm,
            dropout,
            normalize,
            check_fingerprint,
        )
        if finetune and not model:
            raise ValueError(
                "finetune=True needs `model`: a CLIP name (ViT-B/32) or checkpoint path"
            )
        self.finetune = finetune
        self.model = model
        self.download_root = download_root
        self.image_cache = image_cache
        self.chunk_size = chunk_size

    def build(self, ctx: BuildContext) -> None:
        if not self.finetune:
            super().build(ctx)
            return
        import clip

        from mmrec.encoders.base import ItemEncoder

        ItemEncoder.build(self, ctx)
        if ctx.data_dir is None:
            raise ValueError("finetune=True reads items.parquet: the BuildContext needs data_dir")
        clip_model, preprocess = clip.load(
            self.model, device="cpu", jit=False, download_root=self.download_root
        )
        self.clip = clip_model.float().train()
        inputs, present = self._inputs(Path(ctx.data_dir), preprocess)
        self.register_buffer("inputs", inputs, persistent=False)  # [N+1, ...]
        self.register_buffer("present", present, persistent=False)  # [N+1]
        self._init_head(self.clip.text_projection.shape[1], ctx.d_model)

    def _inputs(self, data_dir: Path, preprocess) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _encode(self, inputs: Tensor) -> Tensor:
        raise NotImplementedError

    def content(self, item_idx: Tensor) -> Tensor:  # [...] -> [..., F]
        if not self.finetune:
            return super().content(item_idx)
        uniq, inverse = torch.unique(item_idx, return_inverse=True)
        out = torch.cat(
            [self._encode(self.inputs[c]) for c in uniq.split(self.chunk_size)]
        ).float()  # [U, F]
        if self.normalize:
            out = torch.nn.functional.normalize(out, dim=-1)
        return out[inverse]


class CLIPTextEncoder(_CLIPEncoder):
    """Item text (title, brand, categories, description) through CLIP's text tower.

    By default reads frozen features from ``{data_dir}/features/clip_text.safetensors``
    (written by ``mmrec embed``) and learns only the projection and the "missing" vector:
    cheap, and items never seen in training are scored from their text (cold start).

    With ``finetune=True`` the CLIP model named by ``model`` runs inside ``forward`` and its
    weights train with the recommender. Slow: scoring the whole catalogue encodes every item
    at every step (``all_items``), so memory and time grow with the catalogue; meant for small
    catalogues or a GPU, with a small learning rate.

    Args:
        name: Features file stem under ``features/`` (default ``clip_text``/``clip_image``).
        path: Explicit features file (overrides ``name``).
        hidden: MLP hidden width of the projection; 0 for a single Linear.
        layer_norm: LayerNorm after the projection.
        dropout: Dropout on the features.
        normalize: L2-normalise CLIP vectors before projecting.
        check_fingerprint: Refuse features computed on another item table.
        finetune: Run (and train) CLIP itself instead of reading cached features.
        model: CLIP name or checkpoint path for ``finetune`` (as ``clip.load`` accepts).
        download_root: Where named CLIP models are downloaded.
        image_cache: Image cache of ``mmrec embed`` (default ``{data_dir}/features/image_cache``).
        chunk_size: Items encoded per CLIP forward in ``finetune`` mode.
    """

    modality = ItemText

    def _inputs(self, data_dir: Path, preprocess) -> tuple[Tensor, Tensor]:
        import clip

        texts = ["", *ItemText().load(data_dir)]
        present = torch.tensor([bool(t) for t in texts], dtype=torch.bool)
        present[0] = False
        return clip.tokenize(texts, truncate=True), present  # [N+1, 77]

    def _encode(self, inputs: Tensor) -> Tensor:
        return self.clip.encode_text(inputs)


class CLIPImageEncoder(_CLIPEncoder):
    """Item image through CLIP's image tower; items without a usable image get the learned
    "missing" vector. Arguments as ``CLIPTextEncoder`` (default file ``clip_image``).

    ``finetune=True`` decodes every item's image once at ``build`` from the image cache
    filled by ``mmrec embed`` (no network when it is warm) into a float16 buffer
    ``[N+1, 3, R, R]`` (about 0.3 MB per item at 224 px) and runs the vision tower in
    ``forward``: heavy, see ``CLIPTextEncoder``.
    """

    modality = ItemImage

    def _inputs(self, data_dir: Path, preprocess) -> tuple[Tensor, Tensor]:
        """``(pixels [N+1, 3, R, R] float16, present [N+1])`` of the image cache
        (:func:`mmrec.content.pixels.item_pixels`); items whose cached image cannot be decoded
        are counted and named in a warning and get the missing vector."""
        from mmrec.content.pixels import item_pixels

        urls = ItemImage().load(data_dir)
        cache = self.image_cache or data_dir / "features" / "image_cache"
        res = self.clip.visual.input_resolution
        pixels, present, corrupt = item_pixels(urls, cache, preprocess, res)
        if corrupt:
            shown = ", ".join(map(str, corrupt[:10])) + (", ..." if len(corrupt) > 10 else "")
            warnings.warn(
                f"{type(self).__name__}: {len(corrupt)} of {len(urls)} cached item images "
                f"could not be decoded (item_idx {shown}); they get the missing vector",
                stacklevel=2,
            )
        return pixels, present

    def _encode(self, inputs: Tensor) -> Tensor:
        return self.clip.encode_image(inputs.float())
