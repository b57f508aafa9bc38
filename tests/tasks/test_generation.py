"""text-generation's metric against a direct torch computation, its streaming form, continuation agreement and
collapse. Logits here are random numbers: test material for the arithmetic, not any model's."""

from __future__ import annotations

import math

import numpy as np
import pytest

import compress  # noqa: F401  (before torch/transformers: the torchvision shim)
from compress.tasks import TASKS, Task, postprocess_for
from compress.tasks.generation import (
    GenerationPostprocess,
    GenerationStream,
    KVCache,
    collapse,
    continuation_agreement,
    generation_metrics,
)


def _data(seed=0, n=3, t=16, v=11):
    rng = np.random.default_rng(seed)
    cand = rng.normal(0, 2, (n, t, v)).astype(np.float32)
    ref = (cand + rng.normal(0, 0.7, cand.shape)).astype(np.float32)
    ids = rng.integers(0, v, (n, t)).astype(np.int64)
    return cand, ref, ids


def test_the_metric_is_llama_perplexitys_second_half_scored_by_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    cand, ref, ids = _data()
    out = generation_metrics(GenerationPostprocess(window=16), cand, ref, ids)
    first, t = 16 // 2, 16
    c, r = torch.tensor(cand[:, first:t - 1], dtype=torch.float64), torch.tensor(ref[:, first:t - 1],
                                                                                 dtype=torch.float64)
    tgt = torch.tensor(ids[:, first + 1:t])
    nll = F.cross_entropy(c.reshape(-1, c.shape[-1]), tgt.reshape(-1)).item()
    tnll = F.cross_entropy(r.reshape(-1, r.shape[-1]), tgt.reshape(-1)).item()
    kl = F.kl_div(F.log_softmax(c, -1), F.log_softmax(r, -1), log_target=True, reduction="none").sum(-1).mean().item()
    top1 = (c.argmax(-1) == r.argmax(-1)).double().mean().item()
    assert out["tokens"] == 3 * (t - 1 - first) == 21
    assert out["nll"] == pytest.approx(nll, rel=1e-6)
    assert out["perplexity"] == pytest.approx(math.exp(nll), rel=1e-6)
    assert out["teacher_perplexity"] == pytest.approx(math.exp(tnll), rel=1e-6)
    assert out["perplexity_increase"] == pytest.approx(math.exp(nll) / math.exp(tnll) - 1, rel=1e-6)
    assert out["kl_mean"] == pytest.approx(kl, rel=1e-6)
    assert out["top1_agreement"] == pytest.approx(top1)
    same = generation_metrics(None, ref, ref, ids)
    assert same["kl_mean"] == pytest.approx(0.0, abs=1e-7) and same["top1_agreement"] == 1.0


def test_the_stream_equals_one_update_and_keeps_sums_only():
    cand, ref, ids = _data(seed=1, n=5)
    whole = generation_metrics(None, cand, ref, ids)
    s = GenerationStream(GenerationPostprocess())
    for i in range(0, 5, 2):
        s.update(cand[i:i + 2], ids[i:i + 2], ref[i:i + 2])
    assert s.result() == pytest.approx(whole)
    assert not any(isinstance(v, np.ndarray | list) for v in vars(s).values())
    only = GenerationStream()
    only.update(cand, ids)
    assert set(only.result()) == {"perplexity", "nll", "tokens"}
    with pytest.raises(ValueError, match="token ids"):
        GenerationStream().update(cand, ids[:, :-1])


def test_the_task_table_streams_and_reads_its_postprocess():
    info = TASKS[Task.text_generation]
    assert info.head == "AutoModelForCausalLM" and not info.higher_is_better and not info.classifies
    post = postprocess_for("text-generation", {"window": 128, "bos_token_id": 1, "eos_token_id": [2, 3], "cache": {
        "layers": 2, "kv_heads": 2, "head_size": 8, "max_length": 256}})
    assert post.eos_ids() == [2, 3] and post.cache.layout == "past_key_values"
    assert post.cache.bytes_per_token() == 2 * 2 * 2 * 8 * 4
    assert postprocess_for("text-generation").window == 256

    class M:
        postprocess = post
        labels = None
    cand, ref, ids = _data(seed=2)
    s = info.stream(M())
    s.update(cand, ids, ref)
    assert s.result() == pytest.approx(info.metric_fn(M())(M(), cand, ref, ids))
    with pytest.raises(ValueError):
        KVCache(layers=0, kv_heads=1, head_size=1, max_length=1)


def test_continuation_agreement_counts_until_the_first_divergence():
    assert continuation_agreement([[1, 2, 3, 4], [5, 6]], [[1, 2, 9, 4], [5, 6]]) == pytest.approx(4 / 6)
    assert continuation_agreement([[1, 2]], [[1, 2, 3]]) == pytest.approx(2 / 3)
    assert continuation_agreement([], []) == 1.0
    with pytest.raises(ValueError):
        continuation_agreement([[1]], [])


def test_collapse_names_one_token_loops_and_kl():
    assert "one token" in collapse([[7] * 16, [7] * 12])
    assert "repetition loop" in collapse([[1, 2, 3, 4, 5, 6, 9, 8, 9, 8, 9, 8, 9, 8], [4, 5, 6, 7, 1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3]])
    assert "KL" in collapse([[1, 2, 3, 4, 5, 6, 7, 8]], kl_mean=3.5)
    assert "not finite" in collapse([[1, 2, 3, 4, 5, 6, 7, 8]], kl_mean=float("nan"))
    sane = [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8]]
    assert collapse(sane, kl_mean=0.1) is None
    assert collapse(sane + [[4] * 16]) is None  # one looping prompt among sane ones is not a collapse
    assert collapse([[1, 2]]) is None  # too short to judge
