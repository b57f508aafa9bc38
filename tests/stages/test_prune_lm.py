"""prune of a causal LM: GQA-aware heads, FFN neurons, layers and the vocabulary of tiny random Llama/Qwen models
(test material: random weights with stories260K's real tokenizer, scored on a few written sentences)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.builders.cli import main_error
from tests.builders.lm import STORY, tiny_causal_lm

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    d = tmp_path_factory.mktemp("prune-lm")
    (d / "story.txt").write_text(STORY * 6, encoding="utf-8")
    return d


@pytest.fixture(scope="module")
def gqa(root):
    """Llama, 4 query heads in 2 key/value groups, 3 layers, tied embeddings."""
    return tiny_causal_lm(root / "llama", layers=3, heads=4, kv_heads=2, hidden=32, intermediate=48)


def _load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path)).eval()


def _ids(seed=0, n=2, t=24):
    return torch.from_numpy(np.random.default_rng(seed).integers(3, 512, (n, t)))


def _logits(model, ids):
    with torch.inference_mode():
        return model(input_ids=ids).logits


def _masked(model, heads_removed=None, neurons_removed=None):
    """The model with removed heads' / neurons' contributions zeroed: what the pruned model must compute."""
    import copy

    m = copy.deepcopy(model)
    d = m.config.head_dim
    with torch.no_grad():
        for i, layer in enumerate(m.model.layers):
            for h in (heads_removed or {}).get(i, []):
                layer.self_attn.o_proj.weight[:, h * d:(h + 1) * d] = 0
            for n in (neurons_removed or {}).get(i, []):
                layer.mlp.down_proj.weight[:, n] = 0
    return m


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_rebuild_is_exact_for_heads_groups_neurons_and_layers(arch, root):
    from compress.stages.prune.lm.structure import LMPlan, rebuild

    model = _load(tiny_causal_lm(root / f"r-{arch}", arch=arch, layers=3, heads=4, kv_heads=2, hidden=32,
                                 intermediate=48, seed=3))
    ids = _ids()
    full = _logits(model, ids)
    assert torch.equal(_logits(rebuild(model, LMPlan([0, 1, 2])), ids), full)  # pruning nothing is the identity
    # query heads 1 and 2 leave (one from each group); neurons 5 and 7 leave every layer
    heads = [[0, 3]] * 3
    ffn = [[i for i in range(48) if i not in (5, 7)]] * 3
    small = rebuild(model, LMPlan([0, 1, 2], heads, ffn))
    assert (small.config.num_attention_heads, small.config.num_key_value_heads, small.config.intermediate_size) == \
        (2, 2, 46)
    want = _masked(model, {i: [1, 2] for i in range(3)}, {i: [5, 7] for i in range(3)})
    assert torch.allclose(_logits(small, ids), _logits(want, ids), atol=1e-5)
    # the second key/value group leaves whole (its query heads 2 and 3 with it)
    grouped = rebuild(model, LMPlan([0, 1, 2], [[0, 1]] * 3))
    assert (grouped.config.num_attention_heads, grouped.config.num_key_value_heads) == (2, 1)
    assert torch.allclose(_logits(grouped, ids), _logits(_masked(model, {i: [2, 3] for i in range(3)}), ids),
                          atol=1e-5)
    # a dropped layer is the layer skipped
    skip = model.model.layers[1].register_forward_hook(lambda m, a, k, o: (a[0] if a else k["hidden_states"],
                                                                            *o[1:]) if isinstance(o, tuple)
                                                       else (a[0] if a else k["hidden_states"]), with_kwargs=True)
    try:
        skipped = _logits(model, ids)
    finally:
        skip.remove()
    assert torch.allclose(_logits(rebuild(model, LMPlan([0, 2])), ids), skipped, atol=1e-5)


def test_head_plans_respect_key_value_groups():
    from compress.errors import ConfigError
    from compress.stages.prune.config import HeadUnit
    from compress.stages.prune.lm.structure import Shape, plan_lm_heads
    from compress.stages.prune.structured import Importance

    shape = Shape(layers=1, heads=8, kv_heads=2, head_dim=4, ffn=8)  # 2 groups of 4 query heads
    imp = Importance([np.array([5.0, 1, 4, 2, 9, 8, 0.5, 7])], [np.ones(8)], np.zeros(1), 1, "", "")
    assert plan_lm_heads(imp, shape, 0.5) == (HeadUnit.query, [[0, 2, 4, 5]])  # the two best of each group
    assert plan_lm_heads(imp, shape, 0.5, HeadUnit.group) == (HeadUnit.group, [[4, 5, 6, 7]])  # 24.5 beats 12
    assert plan_lm_heads(imp, shape, 0.25) == (HeadUnit.query, [[0, 2, 3, 4, 5, 7]])  # the worst of each group
    with pytest.raises(ConfigError, match="across a key/value group") as e:
        plan_lm_heads(imp, shape, 0.375)  # 3 of 8: neither evenly per group nor whole groups
    assert "--heads 0.25 | 0.5 | 0.75" in e.value.hint and "--head-unit group: --heads 0.5" in e.value.hint
    with pytest.raises(ConfigError, match="across a key/value group"):
        plan_lm_heads(imp, shape, 0.25, HeadUnit.group)  # 2 heads: half a group


@pytest.fixture(scope="module")
def pruned(gqa, root):
    """Heads (whole groups), FFN, a layer and the vocabulary of the GQA model, through the verb, recovered by two
    distillation steps from the unpruned model."""
    from compress.stages.prune import prune
    from compress.stages.prune.config import PruneConfig

    text = root / "story.txt"
    cfg = PruneConfig(heads=0.5, head_unit="group", ffn=0.25, drop_layers=1, vocab={"corpus": str(text)},
                      max_length=32, importance={"samples": 4}, recovery={"steps": 2, "batch_size": 4})
    return prune(gqa, root / "pruned", cfg, train=text, eval_data=text)


def test_pruned_lm_is_a_plain_smaller_checkpoint(pruned, gqa, root):
    from transformers import AutoTokenizer

    m = pruned.manifest.steps[-1].metrics
    cfg = json.loads((pruned.path / "config.json").read_text())
    assert (cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"],
            cfg["intermediate_size"]) == (2, 2, 1, 8, 36)
    assert cfg["vocab_size"] == m["vocab"]["after"] < 512
    model = _load(pruned.path)  # plain transformers, no edgecompress code
    assert model.get_input_embeddings().weight.shape == (cfg["vocab_size"], 32)
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()  # still tied
    assert m["heads"]["unit"] == "group" and m["heads"]["kv_heads_after"] == 1
    assert m["layers"]["after"] == 2 and m["parameters_after"] < m["parameters_before"] / 2
    p = m["perplexity"]
    assert p["written"]["perplexity"] > 1 and p["unpruned"]["perplexity"] > 1 and p["vs_unpruned"]["windows"] > 0
    assert m["vocab"]["eval_coverage"] == {"texts": 1, "token_coverage": 1.0, "texts_unchanged": 1.0}  # the corpus
    r = m["recovery"]  # distilled from the unpruned model before the vocabulary went (same ids for both)
    assert r["steps"] == 2 and r["after"]["tokens"] > 0 and r["tokenizer"].startswith("original")
    from compress.cli.prune import summary_lines

    text = "\n".join(summary_lines(m))
    for part in ("heads: 8 -> 4", "key/value heads 2 -> 1 (group-wise)", "ffn: 48 -> 36", "layers: 3 -> 2",
                 "perplexity ", "recovery: 2 distillation steps", "top-1 agreement with the unpruned"):
        assert part in text, text
    # the rewritten tokenizer reads the corpus as the old one did, id for kept id
    old, new = AutoTokenizer.from_pretrained(str(gqa)), AutoTokenizer.from_pretrained(str(pruned.path))
    text = (root / "story.txt").read_text()
    keep = m_keep(old, new)
    assert len(new) == cfg["vocab_size"] and [keep[i] for i in new(text)["input_ids"]] == old(text)["input_ids"]


def m_keep(old, new) -> list[int]:
    """The old id of every new id (by token string)."""
    ov = old.get_vocab()
    return [ov[t] for t, _ in sorted(new.get_vocab().items(), key=lambda kv: kv[1])]


@pytest.mark.parametrize("tied", [True, False])  # the head is the embedding; a head with its own rows
def test_vocabulary_pruning_is_exact_on_the_corpus(tied, root):
    from compress.stages.prune import prune
    from compress.stages.prune.config import PruneConfig

    src = tiny_causal_lm(root / f"v-{tied}", layers=1, heads=4, kv_heads=2, hidden=32, intermediate=32, tied=tied,
                         seed=1)
    text = root / "story.txt"
    art = prune(src, root / f"v-{tied}-out", PruneConfig(vocab={"corpus": str(text)}, max_length=32))
    old, new = _load(src), _load(art.path)
    from transformers import AutoTokenizer

    tok_old, tok_new = AutoTokenizer.from_pretrained(str(src)), AutoTokenizer.from_pretrained(str(art.path))
    keep = m_keep(tok_old, tok_new)
    ids_old = torch.tensor([tok_old(STORY)["input_ids"]])
    ids_new = torch.tensor([tok_new(STORY)["input_ids"]])
    assert torch.equal(torch.tensor(keep)[ids_new], ids_old)
    assert torch.allclose(_logits(new, ids_new), _logits(old, ids_old)[..., keep], atol=1e-6)
    assert new.config.tie_word_embeddings == tied and new.lm_head.weight.shape[0] == len(keep)
    assert (new.lm_head.weight.data_ptr() == new.get_input_embeddings().weight.data_ptr()) == tied
    assert art.manifest.steps[-1].metrics["vocab"]["proof"]["logits_max_abs_diff"] == 0.0


@pytest.mark.parametrize(("args", "words"), [
    (["--heads", "0.25"], ["--heads 0.25", "across a key/value group", "--head-unit"]),
    (["--heads", "0.5", "--sparsity", "0.5"], ["--sparsity", "causal LMs"]),
    (["--ffn", "0.5", "--recover-steps", "2", "--recover-average", "--train", "STORY"],
     ["--recover-average", "causal LMs"]),
    (["--ffn", "0.5"], ["importance scores need text", "--train"]),
    (["--drop-layers", "3", "--data", "STORY"], ["--drop-layers 3", "3 layers"]),
    (["--ffn", "0.5", "--data", "STORY", "--vocab-corpus", "story.tsv"], ["story.tsv", ".txt or .jsonl"]),
])
def test_cli_bad_input_is_one_line(capsys, gqa, root, args, words):
    (root / "story.tsv").write_text("label\ttext\n1\ta labelled row\n")
    args = [str(root / "story.txt") if a == "STORY" else str(root / a) if a == "story.tsv" else a for a in args]
    line = main_error(capsys, "prune", gqa, "--out", root / "never", *args)
    assert all(w in line for w in words), line
    assert not (root / "never").exists()


def test_other_families_are_refused_in_one_line(capsys, root):
    src = tiny_causal_lm(root / "gpt2", arch="gpt2", layers=1, heads=2, hidden=32, intermediate=32)
    line = main_error(capsys, "prune", src, "--out", root / "never2", "--ffn", "0.5", "--data", root / "story.txt")
    assert "Llama, Qwen2 and Qwen3" in line and "gpt2" in line


def test_a_pruned_lm_prunes_again_keeping_its_lineage(pruned, root):
    from compress.stages.prune import prune
    from compress.stages.prune.config import PruneConfig

    again = prune(pruned.path, root / "again", PruneConfig(drop_layers=1, max_length=32, importance={"samples": 2}),
                  train=root / "story.txt")
    assert [s.stage for s in again.manifest.steps] == ["prune", "prune"]
    assert again.manifest.source == pruned.manifest.source
    assert json.loads((again.path / "config.json").read_text())["num_hidden_layers"] == 1
    assert again.manifest.steps[-1].metrics["reload_check"]["max_abs_diff"] <= 1e-4
