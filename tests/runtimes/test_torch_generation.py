"""The torch runtime runs a causal LM checkpoint as a stateful step (prefill, then one token per step on
transformers' KV cache), so ``validate`` times and judges a generator in PyTorch itself, on the CPU or a CUDA GPU.

The model is a tiny random Llama (test material, tests/builders/lm.py); on CUDA the same checks run in FP16
and BF16 against the CPU's FP32 (skipped where there is no GPU, as in CI)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from compress.errors import ConfigError
from compress.runtimes.base import RuntimeSettings
from compress.runtimes.torch_backend import TorchBackend
from compress.teachers.load import load_teacher
from tests.builders.lm import STORY, tiny_causal_lm

NEW = 12


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    return tiny_causal_lm(tmp_path_factory.mktemp("torch-gen") / "lm")


def greedy_through(backend, prompt: list[int], new: int) -> tuple[list[int], np.ndarray]:
    """``new`` greedy tokens through ``backend``'s prefill/step, and the prompt's logits."""
    ids = np.asarray([prompt], dtype=np.int64)
    mask = np.ones_like(ids)
    out, state = backend.prefill({"input_ids": ids, "attention_mask": mask})
    first = out["logits"]
    tokens = []
    for _ in range(new):
        nxt = int(np.argmax(out["logits"][0, -1]))
        tokens.append(nxt)
        mask = np.concatenate([mask, np.ones((1, 1), dtype=mask.dtype)], axis=1)
        out, state = backend.step({"input_ids": np.asarray([[nxt]], dtype=np.int64), "attention_mask": mask}, state)
    return tokens, first


def test_torch_runtime_decodes_a_causal_lm_as_transformers_does(lm):
    from compress.teachers.lm import CausalLM

    teacher = CausalLM.load(lm)
    prompt = teacher.encode(STORY)[:40]
    backend = TorchBackend.from_teacher(load_teacher(lm))
    assert backend.stateful
    tokens, logits = greedy_through(backend, prompt, NEW)
    assert logits.shape == (1, len(prompt), teacher.vocab_size) and logits.dtype == np.float32
    assert tokens == teacher.greedy(prompt, NEW)  # FP32 on the CPU: the same tokens, cache and all
    full = next(teacher.logits(np.asarray([prompt])))
    np.testing.assert_allclose(logits, full, atol=1e-4, rtol=0)


def test_validate_times_a_checkpoint_in_the_torch_runtime(lm, tmp_path):
    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate

    profile = tmp_path / "torch-cpu.yaml"
    profile.write_text("name: torch-cpu\nextends: cpu-x86-avx512-vnni\nruntime: {name: torch, threads: 1}\n"
                       "measure: {warmup: 1, min_runs: 5, min_duration_s: 0.05}\nbudgets: {min_top1_agreement: 0.99}\n")
    data = tmp_path / "story.txt"
    data.write_text(STORY * 8)
    report = validate(lm, ValidateConfig.from_flat(profile=str(profile), data=str(data), limit=2, cold_start=False,
                                                   new_tokens=8, prompt_tokens=16, estimate="never"))
    m = report.metrics
    assert report.environment["runtime"]["runtime"] == "torch" and m["decode_tokens_per_s"] > 0
    assert m["top1_agreement"] == 1.0 and m["generation"]["prompt_tokens"] == 16  # the teacher itself


def test_a_model_that_is_not_a_causal_lm_has_no_step(bert_classifier):
    backend = TorchBackend.from_teacher(load_teacher(bert_classifier))
    assert not backend.stateful
    with pytest.raises(ConfigError, match="does not run .* as a stateful step"):
        backend.prefill({"input_ids": np.ones((1, 4), dtype=np.int64)})


def _cuda() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype, compile_", [("fp16", False), ("bf16", False), ("fp16", True)])
def test_torch_cuda_generation_follows_the_cpu_fp32_model(lm, dtype, compile_):
    prompt = list(range(3, 43))
    cpu = TorchBackend.from_teacher(load_teacher(lm))
    gpu = TorchBackend.from_teacher(load_teacher(lm), RuntimeSettings(
        provider="cuda", options={"dtype": dtype, "compile": compile_}))
    want, ref = greedy_through(cpu, prompt, NEW)
    got, logits = greedy_through(gpu, prompt, NEW)
    assert gpu.describe()["device"] == "cuda:0" and logits.dtype == np.float32
    top1 = float(np.mean(logits[0].argmax(-1) == ref[0].argmax(-1)))
    assert top1 >= 0.9, top1  # half precision may flip a near tie, not the model
    assert got[:4] == want[:4], (got, want)
