"""The INT4 grid a causal LM's ONNX artifact gets, simulated in PyTorch: quantization-aware INT4 (:mod:`.qat`)
trains on exactly the weights the artifact will hold.

ONNX Runtime's ``MatMulNBitsQuantizer`` (round to nearest, :mod:`.onnx`) quantizes each MatMul weight [K, N] in
blocks of ``block`` along the input dimension K (the last block padded with zeros), per output column:

- symmetric (the default): the block's value of largest magnitude *with its sign* ``m`` gives the scale
  ``m / -2**(bits-1)``, so that value lands on the grid's end -8 (or -128 at 8 bits); zero point 8 (128);
- asymmetric: ``scale = (max(w, 0) - min(w, 0)) / (2**bits - 1)``, zero point ``roundf(-min / scale)``;
- ``q = clip(roundf(w * (1 / scale) + zero point), 0, 2**bits - 1)``, rounded half away from zero (C's ``roundf``,
  not ``torch.round``'s half to even: ties are rare, but 8-bit heads have thousands of weights).

This is MLAS's ``quantize_matmul_{4,8}bits``; :func:`rtn_grid` reproduces it bit for bit (checked against
``onnxruntime.capi._pybind_state.quantize_matmul_4bits`` and on whole artifacts by
:func:`dequantized_model` in tests/stages/test_lm_qat.py). The LM head is quantized the same way at its own bits
(``--lm-head-bits``; symmetric at 8 bits whatever the body is), the token embedding table by
:func:`.matmul_nbits_graph.int8_gather`'s rule (:func:`embedding_grid`: symmetric int8 rows in blocks along the hidden dimension,
``absmax / 127``) or, at 4 bits, as a symmetric 4-bit block along the hidden dimension; a tied table at 8 and 8 bits
is written once and read by both (:func:`.matmul_nbits_graph.shared_int8_gather`), so both uses see the head's grid.

The fake quantizer is a ``torch.nn.utils.parametrize`` parametrization of a module's ``weight``: the forward sees the
grid, the gradient passes straight through (the straight-through estimator). Tied embeddings (one Parameter shared by
the embedding and the head) keep their tie: each use is fake-quantized by its own rule, as the artifact unties them.
Optional LoRA adapters (:class:`LoRA`, NNCF's and torchao's QAT recipe) sit under the fake quantizer:
``grid(W + B A)``; merged, the trained weight ``W + B A`` is what the artifact's round to nearest reads, so it lands
on the grid training saw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class Scheme:
    """What the artifact's INT4 will be: body bits, block size, symmetric or not, LM head and embedding bits."""

    bits: int = 4
    block: int = 32
    symmetric: bool = True
    lm_head_bits: int = 8
    embeddings_bits: int = 8  #: 32: float


def _round_half_away(x):
    """C's ``roundf`` (half away from zero), exactly: ``torch.round`` rounds half to even."""
    whole = torch.trunc(x)
    return whole + torch.sign(x) * ((x - whole).abs() >= 0.5)


def rtn_codes(w, bits: int, block: int, symmetric: bool):
    """``w`` [N, K] (a torch Linear's weight: one row per output) as ONNX Runtime's MatMulNBits stores it, blocks of
    ``block`` along K (the last padded with zeros): ``(q, scale, zero)``, the codes [N, blocks, block] and each block's
    scale and zero point [N, blocks, 1], all float32. As MLAS computes it: ``q = clip(roundf(w * (1 / scale) +
    zero_point))``, the zero point 2**(bits-1) when symmetric."""
    import torch.nn.functional as F

    n, k = w.shape
    blocks = -(-k // block)
    wb = F.pad(w, (0, blocks * block - k)).reshape(n, blocks, block)
    qmax = 2 ** bits - 1
    if symmetric:
        lo, hi = wb.amin(-1, keepdim=True), wb.amax(-1, keepdim=True)
        scale = torch.where(lo.abs() >= hi.abs(), lo, hi) / -(2 ** (bits - 1))
    else:
        lo, hi = wb.amin(-1, keepdim=True).clamp(max=0), wb.amax(-1, keepdim=True).clamp(min=0)
        scale = (hi - lo) / qmax
    inverse = torch.where(scale == 0, torch.zeros_like(scale), 1.0 / torch.where(scale == 0, 1.0, scale))
    zero = (torch.full_like(scale, 2 ** (bits - 1)) if symmetric
            else torch.clamp(_round_half_away(-lo * inverse), 0, qmax))
    return torch.clamp(_round_half_away(wb * inverse + zero), 0, qmax), scale, zero


def rtn_grid(w, bits: int, block: int, symmetric: bool):
    """``w`` [N, K] rounded to ONNX Runtime's MatMulNBits grid (:func:`rtn_codes`) and dequantized back to float (see
    the module's docstring)."""
    n, k = w.shape
    q, scale, zero = rtn_codes(w, bits, block, symmetric)
    return ((q - zero) * scale).reshape(n, -1)[:, :k]


def embedding_grid(w, block: int):
    """The embedding table ``w`` [V, H] as :func:`.matmul_nbits_graph.int8_gather` stores it: int8 rows in blocks of ``block``
    along H (one block per row when ``block`` does not divide H), scale ``absmax / 127``, dequantized back."""
    vocab, width = w.shape
    if width % block:
        block = width
    wb = w.reshape(vocab, width // block, block)
    scale = wb.abs().amax(-1, keepdim=True) / 127.0
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    return (torch.clamp(torch.round(wb / scale), -127, 127) * scale).reshape(vocab, width)


class FakeQuant(torch.nn.Module):
    """A parametrization: the weight on its grid in the forward, the gradient straight through."""

    def __init__(self, kind: str, bits: int, block: int, symmetric: bool) -> None:
        super().__init__()
        self.kind, self.bits, self.block, self.symmetric = kind, bits, block, symmetric

    def grid(self, w):
        if self.kind == "embedding" and self.bits == 8:
            return embedding_grid(w, self.block)
        return rtn_grid(w, self.bits, self.block, self.symmetric)

    def forward(self, w):
        return w + (self.grid(w) - w).detach()


class LoRA(torch.nn.Module):
    """A parametrization adding a low-rank update ``scale * B @ A`` (B zero at the start: the model is unchanged)."""

    def __init__(self, out_features: int, in_features: int, rank: int, alpha: float) -> None:
        super().__init__()
        self.a = torch.nn.Parameter(torch.empty(rank, in_features))
        torch.nn.init.kaiming_uniform_(self.a, a=math.sqrt(5))
        self.b = torch.nn.Parameter(torch.zeros(out_features, rank))
        self.scale = alpha / rank

    def forward(self, w):
        return w + self.scale * (self.b @ self.a)


def quantized_modules(model) -> dict[str, tuple[Any, str]]:
    """The modules the artifact quantizes, by name -> (module, role): every ``nn.Linear`` (role ``body``), the LM head
    (``head``) and the token embedding (``embedding``)."""
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    out = {}
    for name, module in model.named_modules():
        if module is head:
            out[name] = (module, "head")
        elif module is emb:
            out[name] = (module, "embedding")
        elif isinstance(module, torch.nn.Linear):
            out[name] = (module, "body")
    return out


def attach(model, scheme: Scheme, *, lora_rank: int | None = None, lora_alpha: float | None = None) -> dict[str, Any]:
    """Put the fake quantizers of ``scheme`` (and LoRA adapters of ``lora_rank`` on the body's linear layers) on
    ``model`` in place; return what each module got ({name: bits}; the LoRA parameters under ``"lora"``)."""
    from torch.nn.utils import parametrize

    made: dict[str, Any] = {"layers": {}, "lora": []}
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    # a tied table at 8 and 8 bits is written once, the embedding reading the 8-bit head's rows
    # (:func:`.matmul_nbits_graph.shared_int8_gather`): it is on the head's grid
    shared = (head is not None and emb is not None and head.weight is emb.weight and scheme.lm_head_bits == 8
              and scheme.embeddings_bits == 8 and emb.weight.shape[1] % scheme.block == 0)
    for name, (module, role) in quantized_modules(model).items():
        bits = {"body": scheme.bits, "head": scheme.lm_head_bits, "embedding": scheme.embeddings_bits}[role]
        if role == "body" and lora_rank:
            lora = LoRA(module.out_features, module.in_features, lora_rank, lora_alpha or 2.0 * lora_rank)
            parametrize.register_parametrization(module, "weight", lora)
            made["lora"] += [lora.a, lora.b]
        if bits < 32:
            # the 8-bit head is symmetric whatever the body is (.onnx.weight_only), as the embedding's rows
            symmetric = True if role == "embedding" or (role == "head" and bits == 8) else scheme.symmetric
            kind = "head" if role == "embedding" and shared else role
            parametrize.register_parametrization(module, "weight", FakeQuant(kind, bits, scheme.block, symmetric))
        made["layers"][name] = bits
    return made


def detach(model) -> None:
    """Take the fake quantizers off ``model`` in place, LoRA adapters merged into the weights (the float weights the
    artifact's round to nearest will read)."""
    from torch.nn.utils import parametrize

    for _name, (module, _role) in quantized_modules(model).items():
        if not parametrize.is_parametrized(module, "weight"):
            continue
        plist = module.parametrizations.weight
        w = plist.original.detach()
        for p in plist:
            if isinstance(p, LoRA):
                w = p(w).detach()
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
        with torch.no_grad():
            module.weight.copy_(w)


def dequantized_model(model):
    """A copy of the ONNX ``model`` with each ``MatMulNBits`` replaced by a float ``MatMul`` of its dequantized weight
    (scales and zero points as the kernel reads them): the artifact's weights without the kernel's int8 activations
    (accuracy level 4). Tests compare it with the fake-quantized PyTorch model."""
    import copy

    from onnx import helper, numpy_helper

    model = copy.deepcopy(model)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    for node in [n for n in graph.node if n.op_type == "MatMulNBits"]:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        k, n, bits, block = attrs["K"], attrs["N"], attrs["bits"], attrs["block_size"]
        packed = numpy_helper.to_array(inits[node.input[1]])
        blocks = -(-k // block)
        if bits == 4:
            q = np.stack([packed & 15, packed >> 4], -1).reshape(n, blocks * block).astype(np.float32)
        else:
            q = packed.reshape(n, blocks * block).astype(np.float32)
        scales = numpy_helper.to_array(inits[node.input[2]]).reshape(n, blocks)
        if len(node.input) > 3 and node.input[3]:
            zp = numpy_helper.to_array(inits[node.input[3]])
            zero = (np.stack([zp & 15, zp >> 4], -1).reshape(n, -1)[:, :blocks] if bits == 4
                    else zp.reshape(n, blocks)).astype(np.float32)
        else:
            zero = np.full((n, blocks), 2.0 ** (bits - 1), np.float32)
        w = ((q.reshape(n, blocks, block) - zero[..., None]) * scales[..., None]).reshape(n, blocks * block)[:, :k]
        name = f"{node.name}_dequantized"
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w.T), name))
        out = node.output[0]
        at = list(graph.node).index(node)
        graph.node.remove(node)
        if len(node.input) > 5 and node.input[5]:  # a bias
            graph.node.insert(at, helper.make_node("MatMul", [node.input[0], name], [f"{out}_mm"], name=node.name))
            graph.node.insert(at + 1, helper.make_node("Add", [f"{out}_mm", node.input[5]], [out],
                                                       name=f"{node.name}_bias"))
        else:
            graph.node.insert(at, helper.make_node("MatMul", [node.input[0], name], [out], name=node.name))
    return model
