"""Fake quantization of a PyTorch model at ONNX Runtime's INT8 placement and scheme, for quantization-aware
distillation (:mod:`.qad`).

What ONNX Runtime's quantizer does to each convolution and fully connected layer (``QLinearConv``,
``MatMulInteger``, QDQ around ``Conv``/``MatMul``/``Gemm``), simulated in float with straight-through gradients
(``torch.fake_quantize_per_*_affine``, PyTorch's own):

* **weights**: signed 8-bit, symmetric (zero point 0, range ±127; ±64, ONNX Runtime's 7-bit grid, with
  ``reduce_range``, except in depthwise convolutions, which keep ±127 as
  :func:`~compress.stages.quantize.ort_quantizer.depthwise_convs` says), one scale per output channel (or per tensor),
  the scale re-estimated from the weights at every step as ONNX Runtime will estimate it from the trained ones. With
  BatchNorm after a convolution this is exact although PyTorch keeps the two apart: folding scales each output
  channel, and a per-channel symmetric grid scales with it.
* **the layer's input**: unsigned 8-bit, asymmetric, one range per tensor that includes 0. Static mode: the range
  calibrated before training (each batch's extremes averaged for ``mean-minmax``, else the extremes of all) and held;
  dynamic mode: each batch's own range, as ``DynamicQuantizeLinear`` computes it at run time.
* small GEMMs (K or N under 16) stay float, as the quantizer leaves them.

The layers are found by intercepting the calls (a :class:`torch.overrides.TorchFunctionMode`): ``F.linear`` and
``F.conv*`` in an ``nn.Module``, ``aten.linear``/``aten.conv*`` in a ``torch.export`` program's module, so the same
code serves Hugging Face models, timm models and programs. Each call is numbered in execution order, which is fixed
for a model's forward pass; the static ranges are kept by that number.

Not simulated (so QAD does not adapt to them; PTQ still quantizes them): quantized outputs of a convolution that feed
a float ``Add``, attention's activation-by-activation MatMuls, and INT8 embedding tables. With ``reduce_range``, a
convolution whose output goes on without an activation trains on the 7-bit grid although the artifact gives it 8-bit
u8 weights (:func:`~compress.stages.quantize.ort_quantizer.linear_output_convs`): a finer grid than trained for, never a coarser one.
"""

from __future__ import annotations

from typing import Any

from compress.stages.quantize.speed import SMALL_GEMM

_OPS = {"linear", "conv1d", "conv2d", "conv3d"}
_CONVS = {"conv1d", "conv2d", "conv3d"}
#: what ONNX Runtime's quantized convolution output passes through unquantized: BatchNorm (folded into the weights at
#: export) and the activations its quantize absorbs (Clip, Relu)
_ABSORBED = {"batch_norm", "_native_batch_norm_legit_no_training", "native_batch_norm", "hardtanh", "hardtanh_",
             "relu6", "relu", "relu_", "clamp", "clamp_", "clip", "clip_"}
#: calls that read a tensor's shape, not its values
_SHAPE = {"size", "dim", "numel", "stride", "sym_size", "_assert", "__get__"}


def _name(func: Any) -> str | None:
    import torch

    return func.overloadpacket.__name__ if isinstance(func, torch._ops.OpOverload) else getattr(func, "__name__", None)


def fake_quant_weight(w, *, per_channel: bool, qmax: int):
    """``w`` on ONNX Runtime's symmetric signed grid (scale = max |w| / qmax, per output channel or per tensor)."""
    import torch

    if per_channel:
        amax = w.detach().abs().flatten(1).amax(1).float()
        scale = (amax / qmax).clamp_min(1e-12)
        zero = torch.zeros_like(scale, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -qmax, qmax)
    scale = max(float(w.detach().abs().max()) / qmax, 1e-12)
    return torch.fake_quantize_per_tensor_affine(w, scale, 0, -qmax, qmax)


def uint8_grid(lo: float, hi: float) -> tuple[float, int]:
    """Scale and zero point of ONNX Runtime's asymmetric uint8 grid for the range [lo, hi] widened to hold 0."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max((hi - lo) / 255.0, 1e-12)
    return scale, int(min(255, max(0, round(-lo / scale))))


def fake_quant_activation(x, lo: float, hi: float):
    import torch

    scale, zero = uint8_grid(lo, hi)
    return torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, 255)


class Ranges:
    """Each quantized layer input's calibrated range, by call number: each batch's extremes averaged
    (``mean``, ONNX Runtime's moving-average MinMax) or the extremes of all batches."""

    def __init__(self, mean: bool) -> None:
        self.mean = mean
        self.seen: dict[Any, list[tuple[float, float]]] = {}

    def observe(self, k, x) -> None:
        d = x.detach()
        self.seen.setdefault(k, []).append((float(d.min()), float(d.max())))

    def range(self, k) -> tuple[float, float]:
        seen = self.seen[k]
        if self.mean:
            return sum(s[0] for s in seen) / len(seen), sum(s[1] for s in seen) / len(seen)
        return min(s[0] for s in seen), max(s[1] for s in seen)


class FakeQuant:
    """Run a model with its convolutions and fully connected layers fake-quantized: ``with FakeQuant(...).on():``.

    ``activations``: ``"static"`` (the :class:`Ranges` held), ``"dynamic"`` (each batch's range), ``"observe"``
    (record ranges, run in float: the calibration pass) or ``"off"`` (weights only)."""

    def __init__(self, *, per_channel: bool = True, reduce_range: bool = False, activations: str = "static",
                 ranges: Ranges | None = None) -> None:
        self.per_channel, self.qmax = per_channel, 64 if reduce_range else 127
        self.activations = activations
        self.ranges = ranges or Ranges(mean=False)
        self.calls = 0  # layers seen in the last forward pass
        self.quantized = 0
        self.pending: dict[int, tuple[Any, Any]] = {}  # id -> (range key, tensor): quantized convolution outputs

    def on(self):
        """A context in which the layers called are fake-quantized; :meth:`forward` enters it with the numbering
        restarted, as each pass needs."""
        from torch.overrides import TorchFunctionMode

        fq = self

        class _Mode(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                return fq.call(func, args, kwargs or {})

        return _Mode()

    def call(self, func, args, kwargs):
        name = _name(func)
        if name in _OPS and len(args) >= 2 and getattr(args[1], "dim", None) is not None:
            bias = args[2] if len(args) > 2 else kwargs.pop("bias", None)
            groups = args[6] if len(args) > 6 else kwargs.get("groups", 1)
            w = args[1]
            depthwise = name in _CONVS and groups > 1 and w.shape[0] == groups and w.shape[1] == 1
            x, w, bias, quantized = self.layer(name, args[0], w, bias, full_range=depthwise)
            out = func(x, w, bias, *args[3:], **kwargs)
            if quantized and name in _CONVS and self.activations in ("static", "observe"):
                # QLinearConv's output is quantized too, where it is used (dynamic ConvInteger's is float)
                self.pending[id(out)] = (f"out{self.calls - 1}", out)
            return out
        if self.pending and self.activations != "off":
            first = args[0] if args else None
            if name in _ABSORBED and id(first) in self.pending:  # the quantize sits after BatchNorm and ReLU6
                out = func(*args, **kwargs)
                value = out[0] if isinstance(out, tuple | list) else out  # a program's BatchNorm returns a tuple
                self.pending[id(value)] = (self.pending[id(first)][0], value)
                return out
            if name not in _SHAPE:
                args = tuple(self._settle(a) for a in args)
        return func(*args, **kwargs)

    def _settle(self, a):
        """A pending convolution output, quantized as the float operator consuming it (an ``Add``, a pooling)
        receives it in ONNX Runtime's graph."""
        hit = self.pending.get(id(a))
        if hit is None or hit[1] is not a:
            return a
        return self._activation(hit[0], a)

    def _activation(self, key, x):
        if self.activations == "observe":
            self.ranges.observe(key, x)
            return x
        if self.activations == "static":
            return fake_quant_activation(x, *self.ranges.range(key))
        d = x.detach()
        return fake_quant_activation(x, float(d.min()), float(d.max()))

    def layer(self, op: str, x, w, bias, *, full_range: bool = False):
        """The layer's input, weight and bias as ONNX Runtime will compute with them (``quantized``: whether it is
        quantized at all; ``full_range``: ±127 weights whatever ``reduce_range``, a depthwise convolution's). In static mode the bias is int32 on the grid of input scale x weight scale, which is coarse
        where a weight's scale is large (per-tensor weights): training must not lean on a bias the grid rounds away."""
        k = self.calls
        self.calls += 1
        if op == "linear" and min(w.shape[0], w.shape[-1]) < SMALL_GEMM:
            return x, w, bias, False
        self.quantized += 1
        if self.activations != "off":
            x = self._activation(k, x)
        if self.activations == "observe":
            return x, w, bias, True
        qmax = 127 if full_range else self.qmax
        wq = fake_quant_weight(w, per_channel=self.per_channel, qmax=qmax)
        if bias is not None and self.activations == "static":
            w_scale = w.detach().abs().flatten(1).amax(1) if self.per_channel else w.detach().abs().max().expand(
                w.shape[0])
            scale = (uint8_grid(*self.ranges.range(k))[0] * w_scale.float() / qmax).clamp_min(1e-12)
            bias = bias + ((bias.detach() / scale).round() * scale - bias.detach())  # straight through
        return x, wq, bias, True

    def forward(self, call, model, tensors):
        """``call(model, tensors)`` fake-quantized, the layer numbering restarted for this pass."""
        self.calls, self.quantized, self.pending = 0, 0, {}
        try:
            with self.on():
                return call(model, tensors)
        finally:
            self.pending = {}
