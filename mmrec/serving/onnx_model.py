"""The user side of a model as one graph: the batch fields its encoders read -> user vectors,
exported to ONNX and run by ONNX Runtime or PyTorch behind the same call."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mmrec.config import ConfigError

#: Batch keys a serving batch has (``mmrec.serving.bundle.serving_batch``): the per-event
#: fields, the mask and query times ``[B, L]``, and the per-row ``[B]`` values.
ROW_KEYS = ("user_idx", "history_len", "target_time")
#: ONNX opset of ``mmrec export`` (the TorchScript exporter; GPT-2's blocks need >= 14).
DEFAULT_OPSET = 18


class _Reads(dict):
    """A batch that notes which of its keys are read (``[]``, ``get``, iteration)."""

    def __init__(self, batch: dict[str, Tensor]) -> None:
        super().__init__(batch)
        self.read: dict[str, None] = {}

    def __getitem__(self, key: str) -> Tensor:
        if dict.__contains__(self, key):
            self.read[key] = None
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if dict.__contains__(self, key) else default

    def __iter__(self) -> Iterator[str]:
        self.read |= dict.fromkeys(dict.keys(self))
        return super().__iter__()

    def items(self):  # type: ignore[override]
        self.read |= dict.fromkeys(dict.keys(self))
        return super().items()

    def values(self):  # type: ignore[override]
        self.read |= dict.fromkeys(dict.keys(self))
        return super().values()


def components(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The user-side components of ``model``, by their slot names: ``event_encoders[i]`` and
    ``sequence`` (item encoders and fusion run once, at export, into the item vectors)."""
    found = [(f"event_encoders[{i}]", e) for i, e in enumerate(model.event_encoders)]
    return [*found, ("sequence", model.sequence)]


def _name(slot: str, module: nn.Module) -> str:
    return f"{slot} ({type(module).__name__})"


def tower_inputs(model: nn.Module, batch: dict[str, Tensor], item_vecs: Tensor) -> list[str]:
    """The batch keys ``model.user_vectors`` reads from a serving batch, in the batch's order:
    the inputs of the exported graph, derived from the model's encoders (not a fixed list).

    Raises:
        ConfigError: An encoder reads a key a serving batch does not have (one line naming it).
    """
    for slot, enc in components(model)[:-1]:
        try:
            with torch.no_grad():
                enc(_Reads(batch))
        except KeyError as err:
            raise ConfigError(
                f"{_name(slot, enc)} cannot be exported: it reads batch key {err}, which a "
                f"serving batch does not have (it has {', '.join(batch)})"
            ) from None
    reads = _Reads(batch)
    with torch.no_grad():
        model.user_vectors(reads, item_vecs)
    return [key for key in batch if key in reads.read]


class UserTower(nn.Module):
    """``model.user_vectors`` over named batch tensors, item vectors fixed: ``[B, D]``.

    Args:
        model: A trained ``MMRecModule`` (put in eval mode).
        inputs: The batch keys it reads (``tower_inputs``), the order of ``forward``'s tensors.
        item_vecs: ``[N + 1, D]`` the catalogue through the item tower (history tokens are
            rows of it), computed once.
    """

    def __init__(self, model: nn.Module, inputs: Sequence[str], item_vecs: Tensor) -> None:
        super().__init__()
        self.model = model
        self.inputs = list(inputs)
        self.register_buffer("item_vecs", item_vecs.detach().float(), persistent=False)
        self.eval()  # the exporter restores the mode it found, recursively

    def forward(self, *tensors: Tensor) -> Tensor:  # each [B, L] or [B] -> [B, D]
        batch = dict(zip(self.inputs, tensors, strict=True))
        return self.model.user_vectors(batch, self.item_vecs).float()


def export_onnx(
    module: nn.Module,
    names: Sequence[str],
    example: Sequence[Tensor],
    path: str | Path,
    opset: int = DEFAULT_OPSET,
    output: str = "user_vectors",
    dynamo: bool = False,
    max_len: int | None = None,
) -> None:
    """Write ``module(*example)`` as an ONNX graph with dynamic batch (axis 0 of every input
    and of the output) and history length (axis 1 of inputs of 2 or more axes).

    Args:
        dynamo: False: the TorchScript exporter (traces one run: fast, but a Python number
            read from a shape, ``len(x)``, becomes a constant); True: ``torch.export``
            (symbolic shapes; slower, needs onnxscript). The example must have >= 2 rows and
            >= 2 events (``torch.export`` specialises sizes 0 and 1).
        max_len: The longest history the graph takes (``torch.export``'s bound).
    """
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and deprecation notes: parity checks the graph
        if not dynamo:
            axes: dict[str, dict[int, str]] = {
                n: ({0: "batch", 1: "length"} if t.dim() >= 2 else {0: "batch"})
                for n, t in zip(names, example, strict=True)
            }
            axes[output] = {0: "batch"}
            torch.onnx.export(
                module, tuple(example), str(path), input_names=list(names),
                output_names=[output], dynamic_axes=axes, opset_version=opset, dynamo=False,
            )  # fmt: skip
            return
        batch, length = torch.export.Dim("batch"), torch.export.Dim("length", max=max_len)
        shapes = tuple({0: batch, 1: length} if t.dim() >= 2 else {0: batch} for t in example)
        torch.onnx.export(
            module, tuple(example), str(path), input_names=list(names),
            output_names=[output], dynamic_shapes=(shapes,), opset_version=opset,
            dynamo=True, external_data=False, verbose=False,
        )  # fmt: skip


class ExportFailed(Exception):
    """No exporter wrote a graph that agrees with PyTorch (the reason of each, one line)."""


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:200] if text else ''}"


def max_difference(path: str | Path, module: nn.Module, names: Sequence[str], feeds) -> float:
    """Largest difference between ONNX Runtime's outputs of the graph at ``path`` and
    ``module``'s on each of ``feeds`` (dicts of tensors by input name)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # a graph that fails here is reported by the caller
    session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    used = [i.name for i in session.get_inputs()]  # an input traced away is dropped
    worst = 0.0
    for feed in feeds:
        with torch.no_grad():
            want = module(*(feed[n] for n in names)).float().numpy()
        got = session.run(None, {n: feed[n].numpy() for n in used})[0]
        if got.shape != want.shape:
            return float("inf")
        worst = max(worst, float(np.abs(got - want).max()) if got.size else 0.0)
    return worst


def export_checked(
    module: nn.Module,
    names: Sequence[str],
    feeds: Sequence[dict[str, Tensor]],
    path: str | Path,
    opset: int = DEFAULT_OPSET,
    output: str = "user_vectors",
    max_len: int | None = None,
    atol: float = 1e-4,
) -> tuple[str, float]:
    """Export ``module`` with the first exporter (TorchScript, then ``torch.export``) whose
    graph agrees with PyTorch within ``atol`` on every feed (of other batch sizes and
    lengths than the first, which is the example). Returns the exporter and the difference.

    Raises:
        ExportFailed: Neither did (each one's reason).
    """
    problems = []
    module.eval()
    for dynamo in (False, True):
        name = "torch.export" if dynamo else "torchscript"
        try:
            example = [feeds[0][n] for n in names]
            export_onnx(module, names, example, path, opset, output, dynamo, max_len)
            diff = max_difference(path, module, names, feeds)
        except Exception as err:  # noqa: BLE001 - any exporter or runtime failure is reported
            problems.append(f"{name}: {_one_line(err)}")
            continue
        if diff <= atol:
            return name, diff
        problems.append(f"{name}: ONNX Runtime differs from PyTorch by {diff:.2e} (> {atol})")
    raise ExportFailed("; ".join(problems))


class OnnxTower:
    """An exported user tower run by ONNX Runtime: ``tower(batch) -> [B, D]`` float32.

    Args:
        path: The ``.onnx`` file.
        threads: Intra-op threads of the session (0: ONNX Runtime's default, every core).
    """

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # errors reach the caller as exceptions
        self.session = ort.InferenceSession(
            str(path), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        self.inputs = [i.name for i in self.session.get_inputs()]

    def __call__(self, batch: dict[str, Tensor]) -> np.ndarray:
        feed = {name: batch[name].numpy() for name in self.inputs}
        return self.session.run(None, feed)[0]


class TorchTower:
    """The same user tower run by PyTorch (the reference the ONNX graph is checked against).

    Args:
        tower: A :class:`UserTower`.
    """

    def __init__(self, tower: UserTower) -> None:
        self.tower = tower.eval()
        self.inputs = tower.inputs

    def __call__(self, batch: dict[str, Tensor]) -> np.ndarray:
        with torch.inference_mode():
            return self.tower(*(batch[name] for name in self.inputs)).numpy()


class _Component(nn.Module):
    """One user-side component alone, for :func:`culprit`: an event encoder over the batch,
    or the sequence head's ``last`` over the tokens."""

    def __init__(self, module: nn.Module, inputs: Sequence[str]) -> None:
        super().__init__()
        self.module, self.inputs = module, list(inputs)

    def forward(self, *tensors: Tensor) -> Tensor:
        if self.inputs == ["tokens", "mask"]:
            return self.module.last(*tensors)
        return self.module(dict(zip(self.inputs, tensors, strict=True)))


def culprit(
    model: nn.Module,
    batches: Sequence[dict[str, Tensor]],
    item_vecs: Tensor,
    folder: Path,
    opset: int = DEFAULT_OPSET,
    atol: float = 1e-4,
) -> str | None:
    """The first user-side component that no exporter writes as a graph agreeing with PyTorch
    on ``batches``, with the reasons; None if each does (then it is their composition)."""
    max_len = int(model.hparams.max_len)
    for slot, module in components(model):
        feeds = []
        for batch in batches:
            if slot == "sequence":
                with torch.no_grad():
                    feeds.append({"tokens": model._tokens(batch, item_vecs), "mask": batch["mask"]})
            else:
                reads = _Reads(batch)
                with torch.no_grad():
                    module(reads)
                feeds.append({k: v for k, v in batch.items() if k in reads.read})
        names = list(feeds[0])
        path = folder / f"part_{slot.replace('[', '_').replace(']', '')}.onnx"
        try:
            export_checked(_Component(module, names).eval(), names, feeds, path, opset, "out",
                           max_len, atol)  # fmt: skip
        except ExportFailed as err:
            return f"{_name(slot, module)}: {err}"
        finally:
            path.unlink(missing_ok=True)
    return None
