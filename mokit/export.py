"""Export a model and run it outside PyTorch: ONNX files, ONNX Runtime, ORT's own int8, torch.export.

    export_onnx(model, "m.onnx", in_shape)   # atomic write, dynamic batch axis, checked by onnx
    ort_model = OnnxModel("m.onnx")          # an nn.Module whose forward runs ONNX Runtime
    max_abs_diff(model, ort_model, x)        # max |PyTorch(x) - ORT(x)|
    quantize_onnx("m.onnx", "m.int8.onnx", data=train)   # ORT static int8, calibrated on real data

Because OnnxModel is an nn.Module, mokit's `evaluate`, `predict` and `metrics.measure_latency`
work on an exported file exactly as on the PyTorch model (no second timer, no second eval loop).

ONNX Runtime runs here on the CPU, so every comparison with it (outputs, latency) runs the PyTorch
side on the CPU too, on a copy: a model trained on a GPU is never moved, and its output is never
compared across devices (CUDA's TF32 matmuls differ from the CPU's fp32 by far more than 1e-4).
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import math
import numbers
import os
import pickletools
import re
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

import numpy as np
import torch
from torch import nn

from .data import TensorData, atomic_write_bytes
from .runtime import INPUT, OUTPUT, OrtModel, check_batch, load_session  # noqa: F401 (re-exported)


def _check_in_shape(in_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(in_shape) if isinstance(in_shape, Sequence) and not isinstance(in_shape, str) else ()
    if not shape or not all(isinstance(d, numbers.Integral) and not isinstance(d, bool) and d > 0 for d in shape):
        raise ValueError(f"in_shape must be positive integers per example, like (1, 28, 28); got {in_shape!r}")
    return tuple(int(d) for d in shape)


def _plain_cpu_copy(model: nn.Module) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    return copy.deepcopy(model).cpu().eval()


def on_cpu(model: nn.Module) -> nn.Module:
    """The model as the CPU comparisons run it: an OnnxModel as it is (ONNX Runtime is on the CPU
    already; its session cannot be copied), any other module as an eval-mode CPU copy."""
    return model if isinstance(model, OnnxModel) else _plain_cpu_copy(model)


# ---------------------------------------------------------------------------------------------
# 1. ONNX export (the legacy TorchScript exporter: the torch.export-based one needs onnxscript)
# ---------------------------------------------------------------------------------------------

def onnx_bytes(model: nn.Module, in_shape: Sequence[int], *, opset: int = 17) -> bytes:
    """The ONNX file of `model` for inputs (batch, *in_shape), batch left dynamic, as bytes."""
    import onnx

    shape = _check_in_shape(in_shape)
    model = _plain_cpu_copy(model)
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")     # the exporter's deprecation and tracer warnings
        # a file object works where the stubs say a path
        torch.onnx.export(model, (torch.zeros(2, *shape),), buf, input_names=[INPUT],  # type: ignore[arg-type]
                          output_names=[OUTPUT],
                          dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}}, opset_version=opset,
                          dynamo=False)
    payload = buf.getvalue()
    onnx.checker.check_model(onnx.load_from_string(payload))
    return payload


def export_onnx(model: nn.Module, path: str | os.PathLike, in_shape: Sequence[int], *, opset: int = 17) -> Path:
    """Write `model` as ONNX to `path` atomically (temp file + rename); returns the path."""
    return atomic_write_bytes(path, onnx_bytes(model, in_shape, opset=opset))


# ---------------------------------------------------------------------------------------------
# 2. ONNX Runtime (mokit.serve.OrtModel), wrapped as an nn.Module
# ---------------------------------------------------------------------------------------------

class OnnxModel(nn.Module):
    """An ONNX file run by ONNX Runtime that behaves like a float PyTorch model on the CPU:
    forward(x: (B, *in_shape) tensor) -> logits tensor. Works with evaluate() and measure_latency().

    The runtime itself (mokit.serve.OrtModel) needs no torch, so the server process starts fast."""

    def __init__(self, path: str | os.PathLike, *, threads: int | None = 1):
        super().__init__()
        self.runtime = OrtModel(path, threads=threads)
        self.path, self.in_shape = self.runtime.path, self.runtime.in_shape

    @property
    def file_bytes(self) -> int:
        return self.path.stat().st_size

    def run(self, x: np.ndarray) -> np.ndarray:
        """Logits (B, K) as numpy for a numpy batch (checked first)."""
        return self.runtime.run(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Runs on the CPU; the logits come back on x's device (so evaluate() works on any device)."""
        return torch.from_numpy(self.run(x.detach().cpu().numpy())).to(x.device)

    def extra_repr(self) -> str:
        return f"path={self.path.name}, in_shape={self.in_shape}, bytes={self.file_bytes:,}"


@torch.no_grad()
def max_abs_diff(model: nn.Module, other: nn.Module, x: torch.Tensor) -> float:
    """max |model(x) - other(x)| over all outputs (both run in eval mode on the CPU, on copies:
    neither caller's model is moved or switched to eval)."""
    x = x.detach().cpu()
    a, b = on_cpu(model)(x), on_cpu(other)(x)
    if a.shape != b.shape:
        raise ValueError(f"outputs differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    return float((a.float() - b.float()).abs().max())


# ---------------------------------------------------------------------------------------------
# 3. ONNX Runtime's own int8 (onnxruntime.quantization): static (calibrated) or dynamic
# ---------------------------------------------------------------------------------------------

class _Calibration:
    """onnxruntime.quantization.CalibrationDataReader over the first batches of real data."""

    def __init__(self, data, num_batches: int, batch_size: int):
        x = data.x.cpu() if hasattr(data, "x") else torch.as_tensor(data)
        self.batches = [x[i:i + batch_size].numpy().astype(np.float32)
                        for i in range(0, min(len(x), num_batches * batch_size), batch_size)]
        self.it = iter(self.batches)

    def get_next(self):
        x = next(self.it, None)
        return None if x is None else {INPUT: x}

    def rewind(self):
        self.it = iter(self.batches)


def cpu_has_vnni() -> bool:
    """Whether this x86 CPU multiplies int8 with VNNI (AVX512-VNNI / AVX-VNNI).

    Without it, ONNX Runtime's uint8 x int8 kernels add pairs of products in int16 (vpmaddubsw), which
    saturates for large weights: measured on an AMD EPYC (AVX2) a static int8 LeNet-5 agreed with fp32
    on only 87% of predictions. Quantizing the weights to 7 bits (reduce_range) keeps the sums in range.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True                                # not Linux: assume a current CPU, keep 8 bits
    return "avx512_vnni" in flags or "avx_vnni" in flags


def _quantize_static(src: Path, dst: Path, data, num_batches: int, batch_size: int, per_channel: bool) -> None:
    """Weights int8 per channel, activations uint8 with ranges fixed by calibration (QOperator format:
    QLinearConv / QLinearMatMul kernels, measured faster here than the QDQ format)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if data is None:
        raise ValueError("static int8 needs calibration data (data=train set); or use mode='dynamic'")
    reader = _Calibration(data, num_batches, batch_size)
    if not reader.batches:
        raise ValueError("calibration data is empty: static int8 needs at least one batch")
    CalibrationDataReader.register(_Calibration)
    quantize_static(str(src), str(dst), reader, quant_format=QuantFormat.QOperator, per_channel=per_channel,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=not cpu_has_vnni())


def _quantize_dynamic(src: Path, dst: Path, data, num_batches: int, batch_size: int, per_channel: bool) -> None:
    """Weights int8; activation ranges measured on the fly for every batch (no calibration)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), per_channel=per_channel, weight_type=QuantType.QInt8,
                     reduce_range=not cpu_has_vnni())


QUANT_MODES: dict[str, Callable] = {"static": _quantize_static, "dynamic": _quantize_dynamic}


def quantize_onnx(src: str | os.PathLike, dst: str | os.PathLike, *, mode: str = "static",
                  data: TensorData | None = None, num_batches: int = 8, batch_size: int = 128,
                  per_channel: bool = True) -> Path:
    """ONNX Runtime int8 of the fp32 file `src`, written atomically to `dst`.

    static: q = round(x / s) + z with activation scales s fixed from `num_batches` batches of `data`;
    dynamic: activation scales computed per batch at run time (Linear/MatMul-heavy models).
    """
    src, dst = Path(src), Path(dst)
    if mode not in QUANT_MODES:
        raise ValueError(f"unknown int8 mode {mode!r}; allowed: {', '.join(QUANT_MODES)}")
    if not src.is_file():
        raise FileNotFoundError(f"no ONNX model file at {src}")
    if num_batches < 1 or batch_size < 1:
        raise ValueError(f"num_batches and batch_size must be >= 1, got {num_batches}, {batch_size}")
    root, level = logging.getLogger(), logging.getLogger().level
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        root.setLevel(logging.ERROR)          # ORT logs "consider pre-processing" on every call
        try:
            out = Path(tmp) / dst.name        # ORT writes to a path: quantize there, then one atomic write
            QUANT_MODES[mode](src, out, data, num_batches, batch_size, per_channel)
        finally:
            root.setLevel(level)
        return atomic_write_bytes(dst, out.read_bytes())


# ---------------------------------------------------------------------------------------------
# 4. torch.export: the graph PyTorch itself captures (a .pt2 file), batch dimension dynamic
# ---------------------------------------------------------------------------------------------

MANIFEST = "extra/mokit_manifest.json"     # inside the archive's root folder, next to torch's own members
MANIFEST_FORMAT = "mokit.export_program/1"


def _stored_zip(members: dict[str, bytes]) -> bytes:
    """A zip of `members` (name -> bytes), uncompressed, in the given order."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, payload in members.items():
            z.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), payload)
    return buf.getvalue()


def export_program(model: nn.Module, path: str | os.PathLike, in_shape: Sequence[int]) -> Path:
    """torch.export.export(model) with a dynamic batch, saved atomically as a .pt2 archive.

    The archive carries a manifest (extra/mokit_manifest.json) with the SHA-256 of every other member,
    which load_program checks: a member altered after export (a weight, the graph) is refused."""
    shape = _check_in_shape(in_shape)
    model = _plain_cpu_copy(model)
    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.export.export(model, (torch.zeros(2, *shape),), dynamic_shapes=({0: batch},))
    buf = io.BytesIO()
    torch.export.save(program, buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
        members = {info.filename: z.read(info) for info in z.infolist()}
    root = next(iter(members)).split("/", 1)[0]
    manifest = {"format": MANIFEST_FORMAT, "sha256": {n: hashlib.sha256(b).hexdigest() for n, b in members.items()}}
    members[f"{root}/{MANIFEST}"] = json.dumps(manifest, indent=1, sort_keys=True).encode()
    return atomic_write_bytes(path, _stored_zip(members))


class UnsafeArchive(ValueError):
    """A .pt2 file that load_program refuses before torch reads it: not what export_program writes,
    altered after export, or holding something that could run code when loaded or called."""


# What export_program writes (torch 2.x PT2 archive format, one model called "model"), below the root folder.
_PT2_FIXED = {"archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id",
              "models/model.json", "data/sample_inputs/model.pt", "data/weights/model_weights_config.json",
              "data/constants/model_constants_config.json", MANIFEST}
_PT2_NUMBERED = re.compile(r"data/weights/weight_\d+|data/constants/tensor_\d+")
# The sample inputs are torch.save's zip of a pickle of plain tensors: its members and the only globals
# its pickle may name (torch's tensor rebuild function, storage classes, the OrderedDict of hooks).
_SAVE_MEMBERS = re.compile(r"data\.pkl|data/\d+|version|\.format_version|\.storage_alignment|byteorder"
                           r"|\.data/version|\.data/serialization_id")
_STORAGES = {f"{t}Storage" for t in ("Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char",
                                     "Byte", "Bool")}
_PICKLE_GLOBALS = {("torch._utils", "_rebuild_tensor_v2"), ("collections", "OrderedDict"),
                   *(("torch", s) for s in _STORAGES)}
_PICKLE_OPCODES = {"PROTO", "FRAME", "GLOBAL", "BINPUT", "LONG_BINPUT", "BINGET", "LONG_BINGET", "MEMOIZE",
                   "PUT", "GET", "MARK", "BINUNICODE", "SHORT_BINUNICODE", "BININT", "BININT1", "BININT2", "LONG1",
                   "BINFLOAT", "NONE", "NEWTRUE", "NEWFALSE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "EMPTY_TUPLE",
                   "EMPTY_DICT", "EMPTY_LIST", "APPEND", "APPENDS", "SETITEM", "SETITEMS", "REDUCE", "BINPERSID",
                   "STOP"}
# Graph nodes may only call ATen operators (and operator.getitem / the symbolic-size arithmetic);
# torch's deserializer would resolve any "torch.a.b.c" path, e.g. "torch.serialization.os.system".
_ATEN_TARGET = re.compile(r"torch\.ops\.aten\.[A-Za-z0-9_]+\.[A-Za-z0-9_]+")
_OPERATOR_TARGETS = {"getitem", "add", "sub", "mul", "floordiv", "truediv", "mod", "pow", "neg", "pos", "eq",
                     "ne", "le", "ge", "lt", "gt", "and_", "or_"}
# Shape expressions go through sympy.sympify, which eval()s its text: only sympy's plain names, symbol
# names like s31, integers and arithmetic are allowed (no dots, brackets, quotes but around a symbol name).
_SYMPY_NAMES = {"Symbol", "Integer", "Add", "Mul", "Pow", "Rational", "Max", "Min", "Mod", "FloorDiv", "CeilDiv",
                "CleanDiv", "PythonMod", "ModularIndexing", "FloorToInt", "CeilToInt", "True", "False",
                "positive", "integer", "nonnegative", "negative", "finite", "real"}
_SYMBOL = re.compile(r"[a-z]{1,3}\d{1,6}")
_EXPR_TOKEN = re.compile(r"\s+|[A-Za-z_][A-Za-z0-9_]*|\d+|'[^']*'|\*\*|[-+*/%(),=]|.", re.S)


def _refuse(path: Path, why: str) -> NoReturn:
    raise UnsafeArchive(f"{path}: refused to load this torch.export archive: {why}")


def _read_stored_zip(path: Path, payload: bytes, what: str, allowed) -> dict[str, bytes]:
    """{name below the root folder: bytes} of a zip whose members are all uncompressed, named once, under
    one root folder and each allowed by `allowed(name)`; UnsafeArchive otherwise."""
    try:
        with zipfile.ZipFile(io.BytesIO(payload)) as z:
            infos = z.infolist()
            if not infos:
                _refuse(path, f"{what} is an empty zip")
            if "/" not in infos[0].filename:
                _refuse(path, f"{what} member {infos[0].filename!r} is not under a root folder")
            root = infos[0].filename.split("/", 1)[0]
            members: dict[str, bytes] = {}
            for info in infos:
                name = info.filename
                if not name.startswith(f"{root}/") or info.is_dir():
                    _refuse(path, f"{what} member {name!r} is not a file under the root folder {root!r}")
                rel = name[len(root) + 1:]
                if rel in members:
                    _refuse(path, f"{what} names member {name!r} twice")
                if info.compress_type != zipfile.ZIP_STORED:
                    _refuse(path, f"{what} member {name!r} is compressed; torch writes every member uncompressed")
                if not allowed(rel):
                    _refuse(path, f"{what} has a member torch.export.save does not write for a plain model: {name!r}")
                members[rel] = z.read(info)          # checks the CRC
            return members
    except UnsafeArchive:
        raise
    except Exception as e:                               # BadZipFile, bad CRC, encrypted, truncated, ...
        _refuse(path, f"{what} is not a readable zip archive ({type(e).__name__}: {e})")


def _json(path: Path, name: str, payload: bytes):
    try:
        return json.loads(payload)
    except (ValueError, RecursionError) as e:      # bad UTF-8 / JSON, too long numbers, too deep nesting
        _refuse(path, f"{name} is not valid JSON ({type(e).__name__}: {str(e)[:120]})")


def _check_manifest(path: Path, members: dict[str, bytes]) -> None:
    """Every member but the manifest is listed in it with its SHA-256, and nothing else is listed."""
    if MANIFEST not in members:
        _refuse(path, f"it has no {MANIFEST}: it was not written by mokit.export.export_program (or was written "
                      "before archives carried one); export the model again")
    manifest = _json(path, MANIFEST, members[MANIFEST])
    sums = manifest.get("sha256") if isinstance(manifest, dict) else None
    if not isinstance(sums, dict) or manifest.get("format") != MANIFEST_FORMAT:
        _refuse(path, f"{MANIFEST} is not a {MANIFEST_FORMAT} manifest")
    names = {n.split("/", 1)[-1]: h for n, h in sums.items()} if all(isinstance(n, str) for n in sums) else {}
    listed, present = set(names), set(members) - {MANIFEST}
    if listed != present:
        _refuse(path, f"its members do not match the manifest (not listed: {sorted(present - listed)}, "
                      f"missing: {sorted(listed - present)})")
    for name in sorted(present):
        if hashlib.sha256(members[name]).hexdigest() != names[name]:
            _refuse(path, f"member {name} does not match its SHA-256 in the manifest: "
                          "the file was altered after export")


def _check_pickle(path: Path, name: str, payload: bytes) -> None:
    """An opcode scan (nothing is unpickled): only plain data opcodes and the tensor-rebuild globals."""
    try:
        for op, arg, _ in pickletools.genops(payload):
            if op.name not in _PICKLE_OPCODES:
                _refuse(path, f"{name}: pickle opcode {op.name} is not allowed (only plain tensors may be pickled)")
            if op.name == "GLOBAL" and tuple(str(arg).split(" ", 1)) not in _PICKLE_GLOBALS:
                _refuse(path, f"{name}: the pickle names {str(arg).replace(' ', '.')!r}; allowed: "
                              "torch._utils._rebuild_tensor_v2, torch.*Storage, collections.OrderedDict")
    except UnsafeArchive:
        raise
    except Exception as e:                          # truncated or malformed pickle
        _refuse(path, f"{name} is not a readable pickle ({type(e).__name__}: {e})")


def _check_sample_inputs(path: Path, payload: bytes) -> bytes:
    """data/sample_inputs/model.pt: torch.save's zip of ((tensor, ...), {}) and nothing else. Returns the
    member torch may read: torch.save of the checked tensors (so torch never reads the file's own pickle)."""
    what = "data/sample_inputs/model.pt"
    inner = _read_stored_zip(path, payload, what, lambda rel: bool(_SAVE_MEMBERS.fullmatch(rel)))
    if "data.pkl" not in inner:
        _refuse(path, f"{what} has no data.pkl")
    _check_pickle(path, f"{what}/data.pkl", inner["data.pkl"])
    try:
        value = torch.load(io.BytesIO(payload), weights_only=True, map_location="cpu")
    except Exception as e:
        _refuse(path, f"{what} is not loadable as plain tensors ({type(e).__name__}: {str(e)[:160]})")
    if not (isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], tuple) and value[1] == {}
            and all(isinstance(t, torch.Tensor) for t in value[0])):
        _refuse(path, f"{what} holds {type(value).__name__}; expected ((tensor, ...), {{}})")
    buf = io.BytesIO()
    torch.save((tuple(t.detach().clone() for t in value[0]), {}), buf)
    return buf.getvalue()


def _check_payload_config(path: Path, members: dict[str, bytes], name: str, prefix: str) -> None:
    """Weights / constants configs: raw tensor files only (use_pickle would torch.load with weights_only=False;
    custom and opaque objects would go through the TorchScript unpickler and pickle.loads)."""
    config = _json(path, name, members[name])
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        _refuse(path, f"{name} has no 'config' table")
    folder = name.rsplit("/", 1)[0]
    for fqn, meta in entries.items():
        file = meta.get("path_name") if isinstance(meta, dict) else None
        if not isinstance(file, str) or not re.fullmatch(rf"{prefix}\d+", file):
            _refuse(path, f"{name}: entry {str(fqn)[:80]!r} points to {file!r}; allowed: raw tensor files {prefix}N")
        if meta.get("use_pickle") is not False or not isinstance(meta.get("tensor_meta"), dict):
            _refuse(path, f"{name}: entry {str(fqn)[:80]!r} is pickled; export_program stores plain tensors only")
        if f"{folder}/{file}" not in members:
            _refuse(path, f"{name}: entry {str(fqn)[:80]!r} points to missing member {folder}/{file}")
        sizes = meta["tensor_meta"].get("sizes")
        dims = [d.get("as_int") if isinstance(d, dict) else None for d in sizes] if isinstance(sizes, list) else [None]
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in dims) \
                or math.prod(d or 0 for d in dims) > len(members[f"{folder}/{file}"]):
            _refuse(path, f"{name}: entry {str(fqn)[:80]!r} declares sizes {str(sizes)[:80]} that its "
                          f"{len(members[f'{folder}/{file}']):,}-byte member {file} cannot hold")


def _safe_expr(text) -> bool:
    if not isinstance(text, str) or len(text) > 2000:
        return False
    for tok in _EXPR_TOKEN.findall(text):
        if tok.isspace() or tok.isdigit() or tok in _SYMPY_NAMES or _SYMBOL.fullmatch(tok) \
                or tok in {"**", "-", "+", "*", "/", "%", "(", ")", ",", "="}:
            continue
        if tok[:1] == "'" and _SYMBOL.fullmatch(tok[1:-1]):
            continue
        return False
    return True


def _walk(value):
    """Every dict in a JSON value (iteratively: no recursion limit to hit)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            yield v
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)


def _check_program_json(path: Path, payload: bytes) -> None:
    """models/model.json: no guard code (torch exec()s it), only ATen call targets, only plain shape
    expressions (sympy eval()s them), no custom objects."""
    program = _json(path, "models/model.json", payload)
    if not isinstance(program, dict) or not isinstance(program.get("graph_module"), dict):
        _refuse(path, "models/model.json is not a serialized ExportedProgram")
    if program.get("guards_code"):
        _refuse(path, "models/model.json carries guards_code (Python source torch would exec); "
                      "export_program writes none")
    for key in program.get("range_constraints") or {}:
        if not _safe_expr(key):
            _refuse(path, f"range constraint {str(key)[:80]!r} is not a plain symbol expression")
    for d in _walk(program):
        if "expr_str" in d and not _safe_expr(d["expr_str"]):
            _refuse(path, f"shape expression {str(d['expr_str'])[:80]!r} is not a plain symbol expression "
                          "(sympy would evaluate it as Python)")
        if "target" in d and "inputs" in d:          # a graph node
            t = d["target"]
            if not isinstance(t, str) or not (_ATEN_TARGET.fullmatch(t) or (
                    t.startswith("_operator.") and t.split(".", 1)[1] in _OPERATOR_TARGETS)):
                _refuse(path, f"graph node calls {str(t)[:80]!r}; allowed: ATen operators (torch.ops.aten.*)")
        if d.get("custom_obj_values") or "as_custom_obj" in d:
            _refuse(path, "the graph uses custom (TorchScript) objects; export_program writes none")


def _check_graph(path: Path, module: nn.Module) -> None:
    """After loading: every call in every graph is an ATen operator or operator arithmetic."""
    import operator

    allowed = {getattr(operator, n) for n in _OPERATOR_TARGETS}
    for sub in module.modules():
        graph = getattr(sub, "graph", None)
        for node in getattr(graph, "nodes", ()):
            if node.op == "call_function" and not (node.target in allowed or (
                    isinstance(node.target, torch._ops.OpOverload) and node.target.namespace == "aten")):
                _refuse(path, f"the loaded graph calls {node.target!r}; allowed: ATen operators")


def check_program_archive(path: str | os.PathLike, payload: bytes | None = None) -> bytes:
    """Check a .pt2 file as export_program writes it, without unpickling or evaluating anything from it;
    returns the archive torch may load (rebuilt from the checked members, manifest left out) or raises
    UnsafeArchive (a ValueError) saying what was refused."""
    path = Path(path)
    payload = path.read_bytes() if payload is None else payload
    members = _read_stored_zip(path, payload, "the file",
                               lambda rel: rel in _PT2_FIXED or bool(_PT2_NUMBERED.fullmatch(rel)))
    missing = sorted(_PT2_FIXED - set(members) - {MANIFEST})
    if MANIFEST in members and missing:
        _refuse(path, f"members missing: {missing}")
    _check_manifest(path, members)
    if members["archive_format"] != b"pt2":
        _refuse(path, f"archive_format is {members['archive_format'][:20]!r}, not b'pt2'")
    _check_program_json(path, members["models/model.json"])
    _check_payload_config(path, members, "data/weights/model_weights_config.json", "weight_")
    _check_payload_config(path, members, "data/constants/model_constants_config.json", "tensor_")
    members["data/sample_inputs/model.pt"] = _check_sample_inputs(path, members["data/sample_inputs/model.pt"])
    return _stored_zip({f"archive/{rel}": b for rel, b in members.items() if rel != MANIFEST})


def load_program(path: str | os.PathLike) -> nn.Module:
    """The callable module of a .pt2 file written by export_program.

    torch.export.load may unpickle archive members with an unrestricted unpickler, eval() shape
    expressions and exec() guard code, so nothing reaches it unchecked: the file is read once, every
    member is checked against the manifest and against what export_program writes (check_program_archive),
    and torch loads the checked bytes from memory. A refused file raises UnsafeArchive (a ValueError)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no torch.export file at {path}")
    checked = check_program_archive(path)
    try:
        with warnings.catch_warnings():      # torch's archive reader warns for every CPU-saved program
            warnings.filterwarnings("ignore", message="No complete tensor found in the group")
            module = torch.export.load(io.BytesIO(checked)).module()
    except Exception as e:
        raise ValueError(f"{path} is not a loadable torch.export archive: {e}") from e
    _check_graph(path, module)
    return module


# ---------------------------------------------------------------------------------------------
# 5. PyTorch vs ONNX Runtime: latency percentiles and throughput
# ---------------------------------------------------------------------------------------------

def compare_latency(models: dict[str, nn.Module], in_shape: Sequence[int], *, batch_sizes=(1, 64),
                    repeats: int = 100, threads: int = 1, rounds: int = 3):
    """A Table: p50/p99 ms per batch and examples/s for each model at each batch size, and the device.

    Every model runs on the CPU, where ONNX Runtime runs: PyTorch models as eval-mode CPU copies
    (a GPU-trained model is neither moved nor timed on the GPU against a 1-thread CPU runtime).
    At each batch size the models take turns pass by pass (metrics.interleaved_times, the timer of
    metrics.speedup too), repeats x rounds passes each, so a busy CPU hurts every model alike; p50 and
    p99 are over those passes. ORT sessions use the thread count they were created with (mokit: 1).
    """
    from .metrics import Table, interleaved_times, percentile

    shape = _check_in_shape(in_shape)
    models = {name: on_cpu(model) for name, model in models.items()}
    rows = Table()
    for b in batch_sizes:
        times = interleaved_times(list(models.values()), shape, batch_size=b, passes=repeats * rounds,
                                  warmup=5, threads=threads)
        for name, t in zip(models, times):
            ms = [1e3 * v for v in t]
            p50 = percentile(ms, 0.5)
            rows.append({"model": name, "batch": b, "p50 ms": p50, "p99 ms": percentile(ms, 0.99),
                         "examples/s": b / (p50 / 1e3), "device": "cpu"})
    return rows
