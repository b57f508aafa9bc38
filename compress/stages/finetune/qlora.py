"""QLoRA for ``finetune --qlora``: the base held in 4 bits (NF4 with double-quantized scales, the QLoRA paper's
recipe) by bitsandbytes, LoRA adapters trained in FP32 over it (peft), and the merge that writes a plain checkpoint:
each 4-bit weight dequantized to FP32 and its adapter's update added, so the written model computes what was trained.

Why bitsandbytes: it owns NF4 and is what transformers (``BitsAndBytesConfig``) and peft (``prepare_model_for_kbit_
training``, LoRA over ``Linear4bit``) build QLoRA on; since 0.45 it has a CPU backend, so QLoRA trains on a machine
with no GPU (measured here with bitsandbytes 0.50 and torch 2.13 CPU). torchao's ``NF4Tensor`` is the other owner,
but peft's LoRA does not wrap it and transformers loads no model into it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from compress.errors import ConfigError, MissingBackendError

__all__ = ["BNB_MIN", "NF4Adapters", "held_bytes", "load_nf4", "merge_nf4", "nf4_backend"]

#: the first bitsandbytes release with a CPU backend for 4-bit weights
BNB_MIN = (0, 45)
INSTALL = "pip install 'bitsandbytes>=0.45' (its CPU backend runs without a GPU)"


def nf4_backend() -> str:
    """The version of the installed 4-bit backend (bitsandbytes), or a one-line error naming the package to install."""
    from compress._optional import is_available, version_of

    version = version_of("bitsandbytes") if is_available("bitsandbytes") else None
    if version is None:
        raise MissingBackendError("--qlora holds the base in 4 bits (NF4) through bitsandbytes, which is not installed",
                                  hint=f"install it with: {INSTALL}; or train LoRA over the FP32 base (--lora-rank "
                                  "without --qlora)")
    parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    if parts < BNB_MIN:
        raise MissingBackendError(f"--qlora: bitsandbytes {version} has no CPU backend for 4-bit weights",
                                  hint=f"upgrade it: {INSTALL}")
    return version


def load_nf4(base, device: str):
    """The causal LM at ``base`` with every linear layer but the output head held in NF4 (double-quantized scales,
    FP32 compute), its weights frozen and ready for adapters (peft's ``prepare_model_for_kbit_training``)."""
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from compress.errors import first_line

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.float32)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(base), quantization_config=quant, device_map={"": device},
                                                     dtype=torch.float32, local_files_only=True)
    except (RuntimeError, ValueError, ImportError) as e:
        raise ConfigError(f"--qlora: bitsandbytes cannot hold {base} in 4 bits here ({first_line(e, 160)})",
                          hint="train LoRA over the FP32 base (--lora-rank without --qlora)") from None
    import bitsandbytes as bnb

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, bnb.nn.Linear4bit):
                # bitsandbytes' CPU inference kernel (AVX512-BF16) repacks the codes in place on the first eval-mode
                # forward and computes in BF16: evaluation would then differ from training (FP32 over the dequantized
                # weights) and the codes from what dequantize_4bit reads. Keep the one FP32 path.
                module.support_avx512bf16_for_cpu = False
            for t in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
                if not isinstance(t, bnb.nn.Params4bit):
                    # the FP32 tensors left (embeddings, norms) point into the memory-mapped safetensors file, which
                    # quantizing read whole: while they do, the whole FP32 file stays resident (measured: 76M
                    # parameters, 882 MB resident against 595 MB once copied off it)
                    t.data = t.data.clone()
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def _dequantized(layer) -> torch.Tensor:
    import bitsandbytes as bnb

    weight, state = layer.weight.data, layer.weight.quant_state
    if getattr(state, "packing_format_for_cpu", False):  # repacked for the CPU kernel: back to the standard codes
        weight, state = bnb.functional._convert_weight_packed_for_cpu_inverse(weight, state)
    return bnb.functional.dequantize_4bit(weight, state).float()


def merge_nf4(peft_model, fp32) -> Any:
    """``fp32`` (the base loaded in FP32, same architecture) given the trained model's weights: every NF4 weight
    dequantized, plus its LoRA update where it has adapters; what is not 4-bit (embeddings, norms) is the base's
    own, which QLoRA does not train. The written model computes what the 4-bit model with adapters computed."""
    import bitsandbytes as bnb
    from peft.tuners.lora import LoraLayer

    tuned = peft_model.get_base_model()
    with torch.no_grad():
        for name, module in tuned.named_modules():
            if isinstance(module, LoraLayer):
                weight = _dequantized(module.get_base_layer())
                for adapter in module.active_adapters:
                    weight = weight + module.get_delta_weight(adapter).float()
            elif isinstance(module, bnb.nn.Linear4bit) and not name.endswith(".base_layer"):
                weight = _dequantized(module)
            else:
                continue
            target = fp32.get_submodule(name).weight
            target.copy_(weight.reshape(target.shape).to(target.device))
    return fp32


class NF4Adapters(torch.nn.Module):
    """A peft model over an NF4 base, as the training loop takes it: it trains and evaluates as the peft model does,
    and its ``merge_and_unload`` gives the plain FP32 model (:func:`merge_nf4` into ``load_fp32()``)."""

    def __init__(self, peft_model, load_fp32: Callable[[], Any]) -> None:
        super().__init__()
        self.peft = peft_model
        self._load_fp32 = load_fp32

    def forward(self, *args, **kwargs):
        return self.peft(*args, **kwargs)

    def merge_and_unload(self):
        return merge_nf4(self.peft, self._load_fp32())


def held_bytes(model) -> dict[str, int]:
    """The bytes the model holds: ``base`` (the frozen weights as held: an NF4 weight's packed codes and its
    quantization state) and ``trained`` (the parameters that train: adapters, or every weight)."""
    base = trained = 0
    for p in model.parameters():
        n = p.numel() * p.element_size()
        if p.requires_grad:
            trained += n
            continue
        base += n
        state = getattr(p, "quant_state", None)
        if state is not None:
            base += sum(t.numel() * t.element_size() for t in state.as_dict(packed=True).values()
                        if isinstance(t, torch.Tensor))
    base += sum(b.numel() * b.element_size() for b in model.buffers())
    return {"base": base, "trained": trained}
