"""Shared fixtures: tiny randomly initialised checkpoints (BERT, DistilBERT, RoBERTa, a sentence-transformers
style BERT encoder) and ONNX / INT8 artifacts exported from the tiny BERT classifier.

Everything is built once per session in temporary directories, offline, in a few seconds. torch and
transformers are imported inside the fixtures only, so test modules that do not use them stay light.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import socket
from pathlib import Path

import pytest

importlib.import_module("compress")  # first: installs the hook that lets torchvision (timm, transformers) import beside CPU torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # parallel workers (the README's `-n 2`) share the cores: one PyTorch (OpenMP) thread in each worker and in the CLI
    # processes it starts; torch's default of one thread per core put 4+ threads on 2 cores whenever both computed
    os.environ.setdefault("OMP_NUM_THREADS", "1")
# OpenMP threads that sleep when they wait, as the CLI's own entry sets them (compress._entry.passive_waits), before
# anything imports torch (libgomp reads it once): a validation that times the PyTorch baseline sets torch's threads to
# the profile's (every core), and every PyTorch step after it in this process ran on spinning threads. On the 2-core
# VM at a load of 5-9, OMP_NUM_THREADS=1 as in a worker: test_search.py 199 -> 169 s of CPU, test_image_pipeline.py
# 143 -> 126 s (a tiny MobileNetV2's forward at batch 24 on 2 threads: 0.6-1.6 s of CPU spinning, 20-24 ms passive)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from tests.builders.profiles import BRIEF_MEASURE, SEARCH_BUDGETS, host_profile  # noqa: E402 - after the environment


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (a launcher's main process port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# two processes on the CPU wherever the tests run: on a machine with one GPU, ACCELERATE_USE_CPU alone still sent
# the second process to CUDA device 1 ("invalid device ordinal", seen on an H100); hiding the GPUs keeps both on the CPU
CPU_PROCESSES = {"ACCELERATE_USE_CPU": "1", "CUDA_VISIBLE_DEVICES": ""}


def png_bytes(w: int, h: int, idat: bytes) -> bytes:
    """A PNG with valid chunks and CRCs around ``idat`` (test material for broken and oversized files)."""
    import struct
    import zlib

    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def write_image_regressor(d: Path) -> tuple[Path, Path, Path]:
    """A tiny random ViT regressor (16×16 RGB, one output; test material) and 12 images at its input size (no resize, so
    every reader feeds it the same pixels) with decimal targets, twice: a ``path,label`` table of PNGs and an .npz."""
    import numpy as np
    import torch
    import transformers
    from PIL import Image

    torch.manual_seed(0)
    transformers.ViTForImageClassification(transformers.ViTConfig(
        image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        num_labels=1, problem_type="regression")).eval().save_pretrained(d / "vit-reg")
    transformers.ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(d / "vit-reg")
    images = np.random.default_rng(0).integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)
    targets = [round(0.26 + 0.37 * i, 2) for i in range(12)]  # not whole numbers: a class-name reading would show
    (d / "img").mkdir()
    for i, img in enumerate(images):
        Image.fromarray(img).save(d / "img" / f"{i}.png")
    (d / "reg.csv").write_text("path,label\n" + "".join(f"img/{i}.png,{t}\n" for i, t in enumerate(targets)),
                               encoding="utf-8")
    np.savez(d / "reg.npz", images=images, labels=np.asarray(targets))
    return d / "vit-reg", d / "reg.csv", d / "reg.npz"


ROOT = Path(__file__).resolve().parents[1]
SAMPLES_TSV = ROOT / "compress" / "data" / "samples" / "sentiment.tsv"

LABELS = {0: "negative", 1: "positive"}

# Labelled sentences for the small data files tests write (calibration, parity samples).
SENTENCES: list[tuple[int, str]] = [
    (1, "a gripping, beautifully acted film."),
    (0, "the plot is thin and the jokes fall flat."),
    (1, "i would happily watch it again with friends."),
    (0, "dull."),
    (1, "the service was slow but the food made up for it."),
    (0, "an ambitious mess that never finds its footing."),
    (1, "works exactly as described."),
    (0, "not worth the money."),
    (1, "comfortable shoes that needed no breaking in at all"),
    (0, "the host ignored us for twenty minutes"),
    (1, "a gorgeous, moving story about two sisters"),
    (0, "the battery died after a week"),
]

SPECIALS_WORDPIECE = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_EXTRA_WORDS = """
good bad great terrible love hate movie film story plot acting actor cast music food service price
quality fast slow happy sad boring fun funny best worst never always very really not no yes recommend
waste money time again would buy return product shoes battery phone screen sound table night friday
""".split()


def _corpus() -> list[str]:
    from compress.data.inputs import DEFAULT_SAMPLES

    texts = [t for _, t in SENTENCES] + list(DEFAULT_SAMPLES)
    if SAMPLES_TSV.is_file():
        for line in SAMPLES_TSV.read_text(encoding="utf-8").splitlines()[1:]:
            texts.append(line.partition("\t")[2])
    return texts


def _wordpiece_vocab() -> list[str]:
    """[PAD] [UNK] [CLS] [SEP] [MASK], punctuation, a-z, ##a-##z, digits, then the corpus' words (~500 total)."""
    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    punct = list(".,!?'\"-;:()/&%$")
    vocab = [*SPECIALS_WORDPIECE, *punct, *chars, *(f"##{c}" for c in chars), *"0123456789"]
    vocab += [f"##{d}" for d in "0123456789"]
    words: list[str] = []
    for text in _corpus():
        words += re.findall(r"[a-z]+", text.lower())
    words += _EXTRA_WORDS
    seen = set(vocab)
    for w in sorted(set(words), key=lambda w: (-words.count(w), w)):
        if w not in seen and len(vocab) < 500:
            vocab.append(w)
            seen.add(w)
    return vocab


def _save_wordpiece_tokenizer(directory: Path, cls_name: str = "BertTokenizerFast", max_length: int = 128) -> int:
    """Write vocab.txt and a fast tokenizer (tokenizer.json) into ``directory``; return the vocab size."""
    import transformers

    directory.mkdir(parents=True, exist_ok=True)
    vocab = _wordpiece_vocab()
    vocab_file = directory / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    # from_pretrained of the directory holding vocab.txt: transformers 5 ignores a vocab_file argument
    tok = getattr(transformers, cls_name).from_pretrained(str(directory), do_lower_case=True, model_max_length=max_length)
    assert len(tok) == len(vocab), (len(tok), len(vocab))
    tok.save_pretrained(str(directory))
    assert (directory / "tokenizer.json").is_file()
    return len(vocab)


def _save_bpe_tokenizer(directory: Path, max_length: int = 64) -> int:
    """Train a small byte-level BPE (RoBERTa style) on the corpus; save it as a RobertaTokenizerFast."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        _corpus() * 2, vocab_size=600, min_frequency=1,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"], show_progress=False,
    )
    raw = directory / "_bpe"
    raw.mkdir()
    vocab_file, merges_file = bpe.save_model(str(raw))
    # from_pretrained of the vocab.json/merges.txt directory: transformers 4 and 5 both read it (5 dropped
    # the vocab_file/merges_file constructor arguments)
    tok = RobertaTokenizerFast.from_pretrained(str(raw), model_max_length=max_length)
    assert len(tok) == bpe.get_vocab_size(), (len(tok), bpe.get_vocab_size())
    tok.save_pretrained(str(directory))
    for f in raw.iterdir():
        f.unlink()
    raw.rmdir()
    assert tok.pad_token_id == 1 and tok.bos_token_id == 0
    return len(tok)


def _save_model(model, directory: Path) -> Path:
    model.eval()
    model.save_pretrained(str(directory), safe_serialization=True)
    assert (directory / "model.safetensors").is_file()
    return directory


def _bert_config(vocab_size: int, **kw):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=128, type_vocab_size=2, **kw,
    )



#: The ``slow`` mark, set from measured durations by one rule: a test module whose tests take more than ``SLOW_SHARE``
#: of the whole suite's time (setup, call and teardown of every test, ``python -m pytest -q -n 2 --dist loadfile
#: --durations=0``; a share, so a busy machine moves every module alike) carries ``pytestmark = pytest.mark.slow``.
#: Marked modules are collected first, so that two workers (``--dist loadfile``: a module is one worker's) finish
#: together rather than one running a long module alone at the end; ``-m 'not slow'`` leaves them out of a quick run.
#: A run of the whole suite names, in its summary, every module over the share without the mark: the marks follow the
#: measurements. Measured on the 2-core VM (3,250 s of tests in the first job, 1,094 s in the transformers-5 job): 40
#: modules, 85% of the time (three ExecuTorch modules measured in the transformers-5 job, where executorch is; the
#: real-model test_e2e_real at 0.75% in one run and 3.0% in the next: a shared VM's load moves a share too).
SLOW_SHARE = 0.01


def pytest_configure(config):
    # the order of the modules is the collection's, slow first (pytest-xdist would otherwise reorder them by their
    # number of tests)
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def _module(nodeid: str) -> str:
    return nodeid.split("::")[0]


def pytest_collection_modifyitems(config, items):
    """The modules holding a test marked ``slow`` first (the rest keep pytest's order); tests marked
    ``transformers4`` are skipped, with the reason, where transformers 5 is installed."""
    import importlib.metadata

    slow = {_module(item.nodeid) for item in items if item.get_closest_marker("slow") is not None}
    items.sort(key=lambda item: _module(item.nodeid) not in slow)

    try:
        major = int(importlib.metadata.version("transformers").split(".")[0])
    except importlib.metadata.PackageNotFoundError:
        return
    if major < 5:
        return
    for item in items:
        mark = item.get_closest_marker("transformers4")
        if mark is not None:
            why = mark.args[0] if mark.args else "head pruning"
            item.add_marker(pytest.mark.skip(reason=f"needs transformers 4 ({why}); transformers {major} is installed"))


#: seconds each test module took in this run (setup, call and teardown of its tests), and the modules marked slow
_MODULE_SECONDS: dict[str, float] = {}
_MARKED_SLOW: set[str] = set()


def pytest_runtest_logreport(report):
    # under pytest-xdist the controller receives every worker's reports, their keywords (marks) included
    module = _module(report.nodeid)
    _MODULE_SECONDS[module] = _MODULE_SECONDS.get(module, 0.0) + (report.duration or 0.0)
    if "slow" in report.keywords:
        _MARKED_SLOW.add(module)


def pytest_terminal_summary(terminalreporter, config):
    """After a run of the whole suite (no paths, no ``-m``, no ``-k``): the modules over :data:`SLOW_SHARE` of its time
    without the ``slow`` mark (collected in pytest's order, possibly last, where one worker runs them alone)."""
    whole = (config.args_source is pytest.Config.ArgsSource.TESTPATHS and not config.option.markexpr
             and not config.option.keyword)
    total = sum(_MODULE_SECONDS.values())
    unmarked = sorted(((t, m) for m, t in _MODULE_SECONDS.items() if t > SLOW_SHARE * total and m not in _MARKED_SLOW),
                      reverse=True)
    if whole and unmarked:
        terminalreporter.write_sep("=", f"over {SLOW_SHARE:.0%} of the suite's {total:.0f} s without the slow mark "
                                        "(tests/conftest.py SLOW_SHARE): mark them")
        for seconds, module in unmarked:
            terminalreporter.write_line(f"{seconds:8.1f}s {module}")


# --- checkpoints ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def bert_classifier(tmp_path_factory) -> Path:
    """A tiny BertForSequenceClassification (hidden 32, 2 layers) with a WordPiece fast tokenizer."""
    import torch
    from transformers import BertForSequenceClassification

    d = tmp_path_factory.mktemp("bert-cls")
    n = _save_wordpiece_tokenizer(d, "BertTokenizerFast")
    torch.manual_seed(0)
    cfg = _bert_config(n, num_labels=2, id2label=dict(LABELS), label2id={v: k for k, v in LABELS.items()})
    return _save_model(BertForSequenceClassification(cfg), d)


@pytest.fixture(scope="session")
def bert_one_layer(tmp_path_factory) -> Path:
    """:func:`bert_classifier` with one layer: for the modules that lower it to ExecuTorch, whose passes cost time by
    the graph's node (a 2-layer program took twice the CPU time of a 1-layer one: 20 XNNPACK subgraphs, not 11)."""
    import torch
    from transformers import BertForSequenceClassification

    d = tmp_path_factory.mktemp("bert-cls-1")
    n = _save_wordpiece_tokenizer(d, "BertTokenizerFast")
    torch.manual_seed(0)
    cfg = _bert_config(n, num_labels=2, id2label=dict(LABELS), label2id={v: k for k, v in LABELS.items()})
    cfg.num_hidden_layers = 1
    return _save_model(BertForSequenceClassification(cfg), d)


@pytest.fixture(scope="session")
def bert_regressor(tmp_path_factory) -> Path:
    """A tiny BERT regressor: a one-output sequence-classification head with ``problem_type: regression``."""
    import torch
    from transformers import BertForSequenceClassification

    d = tmp_path_factory.mktemp("bert-reg")
    n = _save_wordpiece_tokenizer(d, "BertTokenizerFast")
    torch.manual_seed(0)
    return _save_model(BertForSequenceClassification(_bert_config(n, num_labels=1, problem_type="regression")), d)


@pytest.fixture(scope="session")
def distilbert_classifier(tmp_path_factory) -> Path:
    import torch
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    d = tmp_path_factory.mktemp("distilbert-cls")
    n = _save_wordpiece_tokenizer(d, "DistilBertTokenizerFast")
    torch.manual_seed(0)
    cfg = DistilBertConfig(
        vocab_size=n, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=128,
        num_labels=2, id2label=dict(LABELS), label2id={v: k for k, v in LABELS.items()},
    )
    return _save_model(DistilBertForSequenceClassification(cfg), d)


@pytest.fixture(scope="session")
def roberta_classifier(tmp_path_factory) -> Path:
    """A tiny RobertaForSequenceClassification with a byte-level BPE tokenizer (pad id 1, positions from 2)."""
    import torch
    from transformers import RobertaConfig, RobertaForSequenceClassification

    d = tmp_path_factory.mktemp("roberta-cls")
    n = _save_bpe_tokenizer(d, max_length=64)
    torch.manual_seed(0)
    cfg = RobertaConfig(
        vocab_size=n, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=66, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2,
        num_labels=2, id2label=dict(LABELS), label2id={v: k for k, v in LABELS.items()},
    )
    return _save_model(RobertaForSequenceClassification(cfg), d)


@pytest.fixture(scope="session")
def bert_encoder(tmp_path_factory) -> Path:
    """A tiny BertModel saved as a sentence-transformers model: Transformer -> mean Pooling -> Normalize."""
    import torch
    from transformers import BertModel

    d = tmp_path_factory.mktemp("bert-st")
    n = _save_wordpiece_tokenizer(d, "BertTokenizerFast")
    torch.manual_seed(0)
    _save_model(BertModel(_bert_config(n)), d)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (d / "modules.json").write_text(json.dumps(modules, indent=2), encoding="utf-8")
    (d / "1_Pooling").mkdir()
    (d / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": 32,
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }, indent=2), encoding="utf-8")
    (d / "2_Normalize").mkdir()
    (d / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": 64, "do_lower_case": False}), encoding="utf-8"
    )
    return d


# --- artifacts ------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def onnx_artifact(bert_classifier, tmp_path_factory):
    """The tiny BERT classifier exported to ONNX (FP32, default settings)."""
    from compress.stages.export import export

    return export(bert_classifier, tmp_path_factory.mktemp("artifacts") / "bert-onnx")


@pytest.fixture(scope="session")
def int8_artifact(onnx_artifact, tmp_path_factory):
    """Dynamic INT8 quantization of ``onnx_artifact``."""
    from compress.stages.quantize import quantize

    return quantize(onnx_artifact, tmp_path_factory.mktemp("artifacts") / "bert-int8")


@pytest.fixture(scope="session")
def ov_artifact(bert_classifier, tmp_path_factory):
    """The tiny BERT classifier exported to an OpenVINO IR (FP32, default settings): built once for the modules that
    run one (it was an export in each)."""
    from compress._optional import is_available

    if not is_available("openvino"):
        pytest.skip("openvino is not installed (pip install 'edgecompress[openvino]')")
    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig

    return export(bert_classifier, tmp_path_factory.mktemp("artifacts") / "bert-ov", ExportConfig(format="openvino"))


# --- data files -----------------------------------------------------------------------------------------


def write_tsv(directory: Path, rows: list[tuple[int | str, str]] | None = None, name: str = "data.tsv") -> Path:
    """Write a ``label<TAB>sentence`` file (header included) with ``rows`` (default: SENTENCES)."""
    rows = SENTENCES if rows is None else rows
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text("label\tsentence\n" + "".join(f"{lab}\t{text}\n" for lab, text in rows), encoding="utf-8")
    return path


@pytest.fixture
def tsv_file(tmp_path) -> Path:
    """A small labelled TSV (label, sentence) in a fresh temporary directory."""
    return write_tsv(tmp_path)


@pytest.fixture(scope="session")
def sample_texts() -> list[str]:
    from compress.data.inputs import DEFAULT_SAMPLES

    return list(DEFAULT_SAMPLES) + [t for _, t in SENTENCES]


@pytest.fixture(scope="session")
def make_tsv():
    """The :func:`write_tsv` helper, for tests that need several data files."""
    return write_tsv


def write_search_workspace(d: Path, teacher: Path) -> Path:
    """A search's inputs in ``d``: a copy of ``teacher``, train/dev/test tables, and ``quick.yaml``, this machine with
    generous budgets (:data:`SEARCH_BUDGETS`), timed briefly."""
    import shutil

    shutil.copytree(teacher, d / "teacher")
    for name in ("train.tsv", "dev.tsv", "test.tsv"):
        write_tsv(d, name=name)
    host_profile(d, "quick", budgets=SEARCH_BUDGETS)
    return d


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """HOME in a temporary directory for a whole test module (the FP32 baseline cache lives under it)."""
    d = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(d))
        yield d


@pytest.fixture(autouse=True)
def _restore_logging():
    """The CLI group configures the root logger (rich handler, force=True): undo that after each test."""
    import logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


NER_TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
NER_SENTENCES = [
    "the service was slow but the food made up for it".split(),
    "a gripping beautifully acted film".split(),
    "not worth the money".split(),
    "I would happily watch it again with friends".split(),
    "works exactly as described".split(),
    "an ambitious mess that never finds its footing".split(),
    "dull".split(),
    "the plot is thin and the jokes fall flat".split(),
] * 3


@pytest.fixture(scope="session")
def ner_teacher(tmp_path_factory) -> Path:
    """A tiny random BertForTokenClassification over IOB2 tags, its classifier scaled so it tags confidently and
    varies its tags (there are entities to find)."""
    import torch
    from transformers import BertForTokenClassification

    d = tmp_path_factory.mktemp("ner")
    n = _save_wordpiece_tokenizer(d)
    torch.manual_seed(0)
    cfg = _bert_config(n, num_labels=len(NER_TAGS), id2label=dict(enumerate(NER_TAGS)),
                       label2id={t: i for i, t in enumerate(NER_TAGS)})
    model = BertForTokenClassification(cfg).eval()
    with torch.no_grad():
        model.classifier.weight.mul_(20)  # confident, varied tags: entities to find
    return _save_model(model, d)


@pytest.fixture(scope="session")
def fast_host(tmp_path_factory) -> str:
    """This machine's profile with a short latency measurement: tests that check metrics, not timings."""
    return host_profile(tmp_path_factory.mktemp("profiles"), "fast-host", measure=BRIEF_MEASURE)


# -- tiny stateful ONNX graphs (a state fed back from step to step), built with onnx.helper ----------------------

def _onnx_artifact(d: Path, graph, inputs: list[tuple[str, str, list]], outputs: list[tuple[str, str, list]],
                   arrays: dict[str, tuple[list, str]]):
    """An ONNX artifact of ``graph`` (generic task, fed as arrays) whose manifest lists its tensors."""
    import onnx
    from onnx import helper

    from compress.artifact import ArrayPreprocess, Artifact, Format, Manifest, Precision, SourceInfo
    from compress.artifact_entries import TensorSpec
    from compress.tasks import Task

    d.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), d / "model.onnx")
    manifest = Manifest(
        task=Task.generic, format=Format.onnx, precision=Precision.fp32, model_file="model.onnx",
        inputs=[TensorSpec(name=n, dtype=t, shape=s) for n, t, s in inputs],
        outputs=[TensorSpec(name=n, dtype=t, shape=s) for n, t, s in outputs],
        preprocess=ArrayPreprocess(shapes={k: v[0] for k, v in arrays.items()}, dtypes={k: v[1] for k, v in arrays.items()}),
        source=SourceInfo(path=str(d), sha256="0" * 64),
    )
    return Artifact(d, manifest)


@pytest.fixture(scope="session")
def accumulator_artifact(tmp_path_factory):
    """A recurrent accumulator: ``y = x + state`` and ``stateN = x + state`` (Silero VAD's naming), the state fed back."""
    from onnx import TensorProto, helper

    f = TensorProto.FLOAT
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "state"], ["sum"]), helper.make_node("Identity", ["sum"], ["y"]),
         helper.make_node("Identity", ["sum"], ["stateN"])],
        "accumulator",
        [helper.make_tensor_value_info("x", f, ["batch", 4]), helper.make_tensor_value_info("state", f, ["batch", 4])],
        [helper.make_tensor_value_info("y", f, ["batch", 4]), helper.make_tensor_value_info("stateN", f, ["batch", 4])],
    )
    return _onnx_artifact(tmp_path_factory.mktemp("accumulator"), graph,
                          [("x", "float32", ["batch", 4]), ("state", "float32", [1, 4])],
                          [("y", "float32", ["batch", 4]), ("stateN", "float32", ["batch", 4])],
                          {"x": ([4], "float32")})


KV_VOCAB, KV_WIDTH = 8, 4


@pytest.fixture(scope="session")
def kv_cache_artifact(tmp_path_factory):
    """A toy causal LM with a one-layer KV cache: token embeddings are appended to ``past_key_values.0.key`` (the
    past grows by the tokens fed, ``present.0.key`` returns it) and ``logits`` are the mean of the cache times an
    output matrix (one position)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    emb = numpy_helper.from_array(rng.normal(size=(KV_VOCAB, KV_WIDTH)).astype(np.float32), "emb")
    out = numpy_helper.from_array(rng.normal(size=(KV_WIDTH, KV_VOCAB)).astype(np.float32), "out")
    f = TensorProto.FLOAT
    graph = helper.make_graph(
        [helper.make_node("Gather", ["emb", "input_ids"], ["tok"]),
         helper.make_node("Concat", ["past_key_values.0.key", "tok"], ["present.0.key"], axis=1),
         helper.make_node("ReduceMean", ["present.0.key"], ["mean"], axes=[1], keepdims=0),
         helper.make_node("MatMul", ["mean", "out"], ["logits"])],
        "kv_cache",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
         helper.make_tensor_value_info("past_key_values.0.key", f, ["batch", "past_sequence", KV_WIDTH])],
        [helper.make_tensor_value_info("logits", f, ["batch", KV_VOCAB]),
         helper.make_tensor_value_info("present.0.key", f, ["batch", "total_sequence", KV_WIDTH])],
        initializer=[emb, out],
    )
    return _onnx_artifact(tmp_path_factory.mktemp("kv_cache"), graph,
                          [("input_ids", "int64", ["batch", "sequence"]),
                           ("past_key_values.0.key", "float32", ["batch", "past_sequence", KV_WIDTH])],
                          [("logits", "float32", ["batch", KV_VOCAB]),
                           ("present.0.key", "float32", ["batch", "total_sequence", KV_WIDTH])],
                          {"input_ids": ([None], "int64")})
