"""The code that runs on a device, in one place: feeds from the manifest's input description, pooling, ONNX Runtime
session options, file hashes, peak memory.

It is shipped as ``edgecompress_device.py`` beside the remote runner (``validate --remote``) and inside every
serverless bundle (``package``), and the runtime adapters here use it too, so what a device measures and what
this machine measures come from the same code. Standard library, numpy and, for text feeds, ``tokenizers``, each
imported where used; Python 3.8+: it must import on a bare board and in a serverless function.
"""

import hashlib
import sys

#: the name it ships under, beside the remote runner and in a bundle
SHIPPED_NAME = "edgecompress_device.py"

ORT_LEVELS = ("disable", "basic", "extended", "all")


def pool(hidden, attention_mask, pooling="mean", normalize=False):
    """Sentence embeddings from token states: mean over the attention mask (as sentence-transformers does)
    or the first token (``cls``), optionally L2-normalised; float32."""
    import numpy as np

    if pooling == "cls":
        pooled = hidden[:, 0, :].astype(np.float64)
    elif pooling == "mean":
        mask = attention_mask[..., None].astype(np.float64)
        pooled = (hidden.astype(np.float64) * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
    else:
        raise ValueError("unsupported pooling %r" % (pooling,))
    if normalize:
        pooled = pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
    return pooled.astype(np.float32)


def ort_session_options(ort, threads=None, level="all", session_config=None):
    """ONNX Runtime session options as edgecompress runs every model: sequential execution, ``threads``
    intra-op threads (one inter-op), graph optimisation ``level`` (disable|basic|extended|all)."""
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    for key, value in (session_config or {}).items():
        opts.add_session_config_entry(str(key), str(value))
    return opts


def sha256_file(path, chunk=1 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def peak_rss_mb():
    """Peak resident memory of this process: Linux VmHWM (reset at exec), else ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0
    except (ImportError, OSError):
        return 0.0


# --- inputs: the one seam from a manifest's description to a model's feeds -----------------------------------
#: the input kinds a manifest's ``preprocess`` may describe (an image kind joins this list, not every caller)
INPUT_KINDS = ("text",)


class TextFeeds(object):
    """A text model's feeds, from a ``tokenizers`` Tokenizer: the int64 tensors its graph takes (``input_names``),
    truncated at ``max_length`` and padded with ``pad_id`` to the longest text or to ``pad_to``."""

    kind = "text"

    def __init__(self, tokenizer, input_names, max_length=512, pad_id=None):
        self.tokenizer = tokenizer
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.input_names = list(input_names)
        self.max_length = int(max_length)
        self.pad_id = 0 if pad_id is None else int(pad_id)

    @classmethod
    def from_dir(cls, directory, input_names, max_length=512, tokenizer_file="tokenizer.json", pad_id=None):
        """Load ``tokenizer_file`` from ``directory``; without ``pad_id``, the pad token named in
        ``tokenizer_config.json`` (0 when there is none). Raises FileNotFoundError without the tokenizer."""
        import json
        import os

        from tokenizers import Tokenizer

        path = os.path.join(str(directory), tokenizer_file)
        if not os.path.isfile(path):
            raise FileNotFoundError(path)
        tokenizer = Tokenizer.from_file(path)
        if pad_id is None:
            cfg_path = os.path.join(os.path.dirname(path), "tokenizer_config.json")
            pad = None
            if os.path.isfile(cfg_path):
                with open(cfg_path, encoding="utf-8") as f:
                    pad = json.load(f).get("pad_token")
            if isinstance(pad, dict):
                pad = pad.get("content")
            pad_id = tokenizer.token_to_id(pad) if pad else None
        return cls(tokenizer, input_names, max_length, pad_id)

    def arrays(self, texts, pairs=None, pad_to=None):
        """Every tensor a tokenizer makes (``input_ids``, ``attention_mask``, ``token_type_ids``) for a batch."""
        import numpy as np

        limit = min(pad_to, self.max_length) if pad_to else self.max_length
        self.tokenizer.enable_truncation(max_length=limit)
        if pad_to:
            self.tokenizer.enable_padding(pad_id=self.pad_id, length=limit)
        else:
            self.tokenizer.enable_padding(pad_id=self.pad_id)
        if pairs is not None and len(pairs) != len(texts):
            raise ValueError("texts and pairs differ in length")
        batch = list(zip(texts, pairs)) if pairs is not None else list(texts)
        enc = self.tokenizer.encode_batch(batch)
        return {
            "input_ids": np.asarray([e.ids for e in enc], dtype=np.int64),
            "attention_mask": np.asarray([e.attention_mask for e in enc], dtype=np.int64),
            "token_type_ids": np.asarray([e.type_ids for e in enc], dtype=np.int64),
        }

    def encode(self, texts, pairs=None, pad_to=None):
        """The feeds of a batch: only the inputs the model takes, in its order."""
        arrays = self.arrays(texts, pairs, pad_to)
        return {name: arrays[name] for name in self.input_names if name in arrays}

    def encode_with_mask(self, texts, pairs=None, pad_to=None):
        """``(feeds, attention_mask)``: the mask pools token states even where the graph does not take it."""
        arrays = self.arrays(texts, pairs, pad_to)
        return {name: arrays[name] for name in self.input_names if name in arrays}, arrays["attention_mask"]


def make_feeds(directory, preprocess, input_names, max_length):
    """A model's feed builder from its manifest's ``preprocess`` description (a dict; ``kind`` picks the class)."""
    spec = dict(preprocess or {})
    kind = spec.get("kind", "text")
    if kind == "text":
        return TextFeeds.from_dir(directory, input_names, max_length, spec.get("tokenizer_file") or "tokenizer.json",
                                  spec.get("pad_id"))
    raise ValueError("unknown input kind %r (known: %s)" % (kind, ", ".join(INPUT_KINDS)))


# --- timing: the loop every latency figure comes from (host, remote device) ------------------------------------

def time_interleaved(runs, warmup=10, min_runs=100, min_duration_s=5.0, max_runs=10000, rounds=10, on_round=None):
    """Seconds per call of each callable in ``runs`` ({name: fn}), timed in alternating rounds (A×k, B×k, A×k, ...)
    until each has ``min_runs`` samples and ``min_duration_s`` of timed work (or ``max_runs``), so that slow drifts
    of a shared, noisy machine hit all of them alike. ``on_round(samples)`` is called after every round."""
    import time

    for fn in runs.values():
        for _ in range(warmup):
            fn()
    samples = dict((name, []) for name in runs)
    per_round = max(1, min_runs // rounds)
    perf = time.perf_counter

    def enough(s):
        return len(s) >= max_runs or (len(s) >= min_runs and sum(s) >= min_duration_s)

    while not all(enough(s) for s in samples.values()):
        for name, fn in runs.items():
            s = samples[name]
            if enough(s):
                continue
            for _ in range(per_round):
                t0 = perf()
                fn()
                s.append(perf() - t0)
        if on_round is not None:
            on_round(samples)
    return samples
