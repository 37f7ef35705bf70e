"""Members through ONNX Runtime on the CPU: exported once from the checkpoint, cached beside it, checked.

``<checkpoint>.onnx`` holds the network (logits, input ``B × bands × H × W`` standardised reflectance, batch
and size dynamic) and ``<checkpoint>.onnx.json`` its model card (bands, resolution, normalisation, classes),
the checkpoint's SHA-256 it was exported from (a changed checkpoint is exported again) and the largest
absolute difference between ONNX Runtime's and PyTorch's logits on a test input (export fails above
:data:`PARITY_TOLERANCE`). The pair is also what ``torchbearer export`` writes for use outside torchbearer.

:func:`choose_runtimes` picks, per member, PyTorch or ONNX Runtime for a prediction: ``torch`` and ``onnx``
force one, ``auto`` runs a batch through both once and keeps the faster (on a GPU it is always PyTorch,
whose float16 autocast and channels-last layout ONNX Runtime's CPU provider cannot beat). ``onnx-int8`` (set,
never chosen by ``auto``: its logits are not PyTorch's) runs an 8-bit quantization of the export
(:class:`Int8OnnxModel`), calibrated on the first windows the member is given, about twice as fast as float32
on a CPU without AVX-512 (``docs/benchmarks.md``).

The exporter is torch's TorchScript-based one (``dynamo=False``): the dynamo exporter needs ``onnxscript``,
which is not a dependency, and exports these convolutional networks to the same graph.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn

from torchbearer.ml.checkpoint import CheckpointError, ModelCard
from torchbearer.ml.members import load_member

if TYPE_CHECKING:
    from torchbearer.inference.members import Member

log = logging.getLogger(__name__)

Runtime = Literal["auto", "torch", "onnx", "onnx-int8"]

OPSET = 17
"""ONNX opset of the exported graphs (ONNX Runtime 1.16 and later run it)."""
PARITY_TOLERANCE = 1e-3
"""Largest absolute difference of logits (ONNX Runtime vs PyTorch, float32) an export may show."""
PARITY_SIZE = 64
"""Side (pixels) of the parity check's input: a multiple of 32, which U-Net's encoders need."""
MEASURE_SIZE = 128
"""Largest window side (pixels) of ``runtime: auto``'s measurement (a multiple of 32, for U-Net)."""
CALIBRATION_WINDOWS = 4
"""Windows (the first of the first batch a member is given) whose activations set its 8-bit ranges."""
INT8_AGREEMENT_WARNING = 0.99
"""Share of calibration pixels whose label the 8-bit model must give as float32 does, or a warning is logged."""
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


class OnnxExportError(RuntimeError):
    """A checkpoint cannot be exported to ONNX, or its export does not match PyTorch (message says which)."""


@dataclass(frozen=True)
class Export:
    """An exported member: the ONNX file, its card file, and how closely it matches PyTorch."""

    onnx: Path
    card: Path
    max_abs_diff: float
    cached: bool
    """True when an earlier export of the same checkpoint was reused."""


def onnx_path(checkpoint: Path) -> Path:
    """Where a checkpoint's ONNX export goes: beside it, ``<name>.onnx``."""
    return Path(checkpoint).with_suffix(".onnx")


def card_path(onnx: Path) -> Path:
    """The model-card JSON of an ONNX export: ``<name>.onnx.json``."""
    return onnx.with_name(onnx.name + ".json")


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(2**20):
            digest.update(block)
    return digest.hexdigest()


def _parity_input(card: ModelCard, batch: int = 1, size: int = PARITY_SIZE) -> torch.Tensor:
    """A fixed standardised input (seeded normal values: what the network sees after normalisation)."""
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch, card.in_channels, size, size, generator=generator)


def session(path: Path, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session of ``path`` with all graph optimisations, ``threads`` intra-op threads
    (default: as many as PyTorch uses, so both runtimes get the same cores)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own unexported exception types
        raise OnnxExportError(f"{path}: ONNX Runtime cannot load it ({type(exc).__name__}: {exc})") from exc


class OnnxModel(nn.Module):
    """An ONNX Runtime session as a module: float32 B × bands × H × W in, logits out (on the CPU)."""

    runtime = "onnx"
    prepared = True
    """Nothing for ``ensemble.prepare_model`` to convert (no layout, no batch norms to fold)."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        self.session = session(self.path, threads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        (logits,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: array})
        return torch.from_numpy(logits)


def labels(logits: np.ndarray) -> np.ndarray:
    """Each pixel's label from B × C × H × W logits: positive logit (one channel, binary) or argmax."""
    return logits[:, 0] > 0 if logits.shape[1] == 1 else logits.argmax(axis=1)


class _QuantizerNoise(logging.Filter):
    """Drops what ONNX Runtime's quantizer logs on the root logger: a warning, with a whole tensor type
    printed, for each shape tensor it leaves in float (dozens a network), which would be the job's log markers."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "onnxruntime" not in record.pathname


def quantize_export(fp32: Path, calibration: np.ndarray, output: Path) -> dict[str, Any]:
    """Quantize an ONNX export to 8 bits and write it to ``output`` with a record ``<output>.json``.

    Static quantization by ONNX Runtime: weights per output channel (7-bit range: without AVX-512 VNNI the
    8-bit kernels would saturate), activations unsigned with min-max ranges seen on ``calibration``
    (B × bands × H × W standardised windows, fed one at a time). The record holds how closely the result
    follows the float32 export on those windows: ``label_agreement`` (share of pixels with the same label)
    and ``max_abs_diff`` (of the logits), and the float32 file's SHA-256 (a new export is quantized again).

    Raises:
        OnnxExportError: ONNX Runtime cannot quantize or load the graph.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Windows(CalibrationDataReader):
        def __init__(self) -> None:
            self.windows = iter(np.split(np.ascontiguousarray(calibration, np.float32), len(calibration)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            window = next(self.windows, None)
            return None if window is None else {INPUT_NAME: window}

    start = time.perf_counter()
    output.parent.mkdir(parents=True, exist_ok=True)
    unique = f"{output.name}.{os.getpid()}.{threading.get_ident()}"
    pre, quantized = output.with_name(f"{unique}.pre.tmp"), output.with_name(f"{unique}.tmp")
    quiet = _QuantizerNoise()
    logging.getLogger().addFilter(quiet)
    try:
        # The pre-pass folds and fuses the float graph first (what the quantizer expects); symbolic shape
        # inference cannot follow the dynamic height and width, and the quantizer needs none.
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre), str(quantized), Windows(), quant_format=QuantFormat.QOperator, per_channel=True,
            reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        )  # fmt: skip
        expected = session(fp32).run([OUTPUT_NAME], {INPUT_NAME: calibration})[0]
        got = session(quantized).run([OUTPUT_NAME], {INPUT_NAME: calibration})[0]
    except OnnxExportError:
        quantized.unlink(missing_ok=True)
        raise
    except Exception as exc:  # the quantizer raises many types for graphs it cannot handle
        quantized.unlink(missing_ok=True)
        raise OnnxExportError(f"{fp32}: cannot quantize to 8 bits ({type(exc).__name__}: {exc})") from exc
    finally:
        logging.getLogger().removeFilter(quiet)
        pre.unlink(missing_ok=True)
    quantized.replace(output)
    record = {
        "float32": str(fp32), "float32_sha256": file_sha256(fp32), "calibration_windows": len(calibration),
        "window": list(calibration.shape[2:]), "label_agreement": float((labels(got) == labels(expected)).mean()),
        "max_abs_diff": float(np.abs(got - expected).max()), "seconds": time.perf_counter() - start,
    }  # fmt: skip
    card_path(output).write_text(json.dumps(record, indent=2) + "\n")
    return record


class Int8OnnxModel(nn.Module):
    """An 8-bit ONNX Runtime session as a module, quantized from the float32 export ``fp32`` on its first call.

    The first :data:`CALIBRATION_WINDOWS` windows of the first batch calibrate it (:func:`quantize_export`);
    the quantized file goes to ``path`` and is reused by a later call of the same prediction (a resumed one
    included), so one prediction runs one quantization whatever order its windows come in.
    """

    runtime = "onnx-int8"
    prepared = True

    def __init__(self, name: str, fp32: Path, path: Path, threads: int | None = None) -> None:
        super().__init__()
        self.name, self.fp32, self.path, self.threads = name, Path(fp32), Path(path), threads
        self._session: Any = None
        self._lock = threading.Lock()

    def _open(self, calibration: np.ndarray) -> Any:
        with self._lock:
            if self._session is None:
                record = _cached(self.path, "float32_sha256", file_sha256(self.fp32))
                if record is None:
                    record = quantize_export(self.fp32, calibration[:CALIBRATION_WINDOWS], self.path)
                    agreement = record["label_agreement"]
                    log.log(
                        logging.WARNING if agreement < INT8_AGREEMENT_WARNING else logging.INFO,
                        "model %r: quantized to 8 bits on %d windows in %.1f s; its labels agree with float32 "
                        "on %.2f %% of their pixels (max |int8 − float32| %.3g on the logits)",
                        self.name, record["calibration_windows"], record["seconds"], 100 * agreement,
                        record["max_abs_diff"],
                    )  # fmt: skip
                self._session = session(self.path, self.threads)
            return self._session

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        (logits,) = self._open(array).run([OUTPUT_NAME], {INPUT_NAME: array})
        return torch.from_numpy(logits)


def _cached(path: Path, key: str, sha256: str) -> dict[str, Any] | None:
    """The card file of a usable earlier ``path`` made from the bytes whose hash its ``key`` holds (an export:
    ``checkpoint_sha256``; a quantization: ``float32_sha256``), or None."""
    try:
        meta = json.loads(card_path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get(key) != sha256 or not path.is_file():
        return None
    return meta


def export_checkpoint(checkpoint: Path, output: Path | None = None, *, reuse: bool = True) -> Export:
    """Export a torchbearer checkpoint's network to ONNX with its model card, checked against PyTorch.

    Args:
        checkpoint: a ``.ckpt`` with a model card (``ml/checkpoint.py``).
        output: the ``.onnx`` to write (default :func:`onnx_path`); the card goes to :func:`card_path` of it.
        reuse: keep an earlier export of the same checkpoint bytes instead of exporting again.

    Raises:
        CheckpointError: the checkpoint is missing, unreadable or has no usable card.
        OnnxExportError: the network cannot be exported, or ONNX Runtime's logits differ from PyTorch's by
            more than :data:`PARITY_TOLERANCE`.
    """
    checkpoint = Path(checkpoint)
    model, card = load_member(checkpoint, "cpu")  # raises CheckpointError naming the file
    onnx = Path(output) if output is not None else onnx_path(checkpoint)
    sha256 = file_sha256(checkpoint)
    if reuse and (meta := _cached(onnx, "checkpoint_sha256", sha256)) is not None:
        return Export(onnx, card_path(onnx), float(meta["max_abs_diff"]), cached=True)

    sample = _parity_input(card)
    tmp = onnx.with_name(f"{onnx.name}.{os.getpid()}.{threading.get_ident()}.tmp")  # two jobs may export at once
    try:
        onnx.parent.mkdir(parents=True, exist_ok=True)
        with torch.no_grad(), warnings.catch_warnings():
            # The legacy exporter is chosen on purpose (see the module's docstring): its deprecation is noise.
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                model, (sample,), str(tmp), dynamo=False, opset_version=OPSET,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
                              OUTPUT_NAME: {0: "batch", 2: "height", 3: "width"}},
            )  # fmt: skip
        # Two windows of another size than the one traced: a size or batch baked into the graph shows here.
        check = _parity_input(card, batch=2, size=2 * PARITY_SIZE)
        with torch.inference_mode():
            expected = model(check).numpy()
        got = OnnxModel(tmp, threads=1)(check).numpy()
    except OnnxExportError:
        tmp.unlink(missing_ok=True)
        raise
    except Exception as exc:  # the exporter raises many types for unsupported operators
        tmp.unlink(missing_ok=True)
        raise OnnxExportError(f"{checkpoint}: cannot export {card.arch} to ONNX ({type(exc).__name__}: {exc})") from exc
    if got.shape != expected.shape:
        tmp.unlink(missing_ok=True)
        raise OnnxExportError(f"{checkpoint}: ONNX output has shape {got.shape}, PyTorch's {expected.shape}")
    diff = float(np.abs(got - expected).max())
    if not diff <= PARITY_TOLERANCE:
        tmp.unlink(missing_ok=True)
        raise OnnxExportError(
            f"{checkpoint}: ONNX Runtime's logits differ from PyTorch's by up to {diff:.3g} "
            f"(more than {PARITY_TOLERANCE:g}); the export is not used"
        )
    tmp.replace(onnx)
    meta = {
        "model_card": card.to_dict(),
        "input": {"name": INPUT_NAME, "shape": ["batch", card.in_channels, "height", "width"],
                  "dtype": "float32", "meaning": "(reflectance - norm.mean) / norm.std per band, in card bands "
                  "order; reflectance = DN × scale + offset of the product; no-data pixels 0"},
        "output": {"name": OUTPUT_NAME, "meaning": "logits: sigmoid of the one channel (binary task) or softmax "
                   "over channels (multiclass) gives probabilities of the card's classes"},
        "checkpoint": str(checkpoint), "checkpoint_sha256": sha256, "opset": OPSET,
        "max_abs_diff": diff, "torch": torch.__version__,
    }  # fmt: skip
    card_file = card_path(onnx)
    card_file.write_text(json.dumps(meta, indent=2) + "\n")
    log.info("exported %s to %s (max |ONNX − PyTorch| %.2g on the logits)", checkpoint, onnx, diff)
    return Export(onnx, card_file, diff, cached=False)


def _seconds(model: nn.Module, x: torch.Tensor, repeats: int = 2) -> float:
    """Fastest of ``repeats`` forwards after one warm-up, seconds of wall time."""
    with torch.inference_mode():
        model(x)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            best = min(best, time.perf_counter() - start)
    return best


def choose_runtimes(
    members: Sequence[Member],
    runtime: Runtime,
    device: str,
    *,
    window: int,
    optimize: bool = True,
    int8_dir: Path | None = None,
) -> list[str]:
    """Put each member on PyTorch or ONNX Runtime (replacing its ``model``); returns the runtime of each.

    ``torch``: all stay. ``onnx``: all through ONNX Runtime (an export that fails is an error). ``onnx-int8``:
    all through an 8-bit quantization of their export, written to ``int8_dir`` (the prediction's own: it is
    calibrated on this prediction's windows) as ``<k>-<name>.onnx``. ``auto``: on a
    GPU all stay; on a CPU each member whose export works runs one window (``window`` pixels, at most
    :data:`MEASURE_SIZE`) through its prepared PyTorch model and through ONNX Runtime (after a warm-up call,
    best of two), and keeps the faster; the choice and both times are logged. Members without a checkpoint
    file stay on PyTorch.
    """
    from torchbearer.inference.members import EnsembleError
    from torchbearer.inference.prepare import input_layout, prepare_model

    chosen = []
    for index, member in enumerate(members):
        if runtime == "torch" or (runtime == "auto" and device != "cpu"):
            chosen.append("torch")
            continue
        if getattr(member.model, "is_classical", False):  # a random forest (ml/forest.py) has no graph to export
            chosen.append("sklearn")
            continue
        if runtime != "auto" and device != "cpu":
            raise EnsembleError(f"runtime: {runtime} runs on the CPU; this prediction runs on {device}")
        source = Path(member.source) if member.source else None
        if source is None or not source.is_file():
            if runtime != "auto":
                raise EnsembleError(f"model {member.name!r} has no checkpoint file to export to ONNX")
            chosen.append("torch")
            continue
        if runtime == "onnx-int8":
            if int8_dir is None:
                raise ValueError("runtime onnx-int8 needs int8_dir, the prediction's folder for its quantized files")
            export = export_checkpoint(source)
            safe_name = "".join(c if c.isalnum() or c in "-_" else "_" for c in member.name)
            member.model = Int8OnnxModel(member.name, export.onnx, Path(int8_dir) / f"{index}-{safe_name}.onnx")
            log.info("model %r: runtime onnx-int8 (set; quantized on its first windows)", member.name)
            chosen.append("onnx-int8")
            continue
        try:
            export = export_checkpoint(source)
            onnx_model = OnnxModel(export.onnx)
        except (OnnxExportError, CheckpointError, OSError) as exc:
            if runtime == "onnx":
                raise
            log.warning("model %r stays on PyTorch: %s", member.name, exc)
            chosen.append("torch")
            continue
        if runtime == "onnx":
            log.info("model %r: runtime onnx (set; max |ONNX − PyTorch| %.2g)", member.name, export.max_abs_diff)
        else:
            # One window of at most MEASURE_SIZE² pixels: both runtimes scale alike with size and batch, and the
            # measurement must stay short next to the prediction (a 256² FCN window takes seconds on 2 cores).
            side = min(window, MEASURE_SIZE)
            x = torch.randn(1, member.card.in_channels, side, side)
            cpu = torch.device("cpu")
            torch_model = prepare_model(member.model, cpu, optimize)
            t_torch = _seconds(torch_model, x.contiguous(memory_format=input_layout(torch_model, cpu, optimize)))
            t_onnx = _seconds(onnx_model, x)
            pick = "onnx" if t_onnx < t_torch else "torch"
            log.info(
                "model %r: runtime %s (auto: ONNX Runtime %.3f s, PyTorch %.3f s per %d window of %d²; "
                "max |ONNX − PyTorch| %.2g)",
                member.name, pick, t_onnx, t_torch, x.shape[0], side, export.max_abs_diff,
            )  # fmt: skip
            if pick == "torch":
                chosen.append("torch")
                continue
        member.model = onnx_model
        chosen.append("onnx")
    return chosen
