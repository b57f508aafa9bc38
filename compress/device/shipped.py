"""The code that runs on a device, in one place: pooling, ONNX Runtime session options, reading outputs (entities,
first sub-tokens, rows concatenated), a generator's step feeds, the timing loop and streaming calls; its other parts
are the feeds from the manifest's input description, :mod:`compress.device.feeds`, and the host facts (the CPU's name,
file hashes, peak memory), :mod:`compress.device.facts`.

It is shipped as ``edgecompress_device.py`` beside the remote runner (``validate --remote``) and inside every
serverless bundle (``package``), and the runtime adapters here use it too, so what a device measures and what
this machine measures come from the same code. Standard library and numpy, each imported where used; Python 3.8+: it
must import on a bare board and in a serverless function.
"""

#: the name it ships under, beside the remote runner and in a bundle
SHIPPED_NAME = "edgecompress_device.py"
#: every part of the device code, by the name it ships under (beside the remote runner, in a bundle): its source file
#: in compress/device; the parts import nothing from each other
SHIPPED_FILES = {SHIPPED_NAME: "shipped.py", "edgecompress_feeds.py": "feeds.py", "edgecompress_facts.py": "facts.py"}

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
    intra-op threads (one inter-op), graph optimisation ``level`` (disable|basic|extended|all), and worker
    threads that stop spinning when a run ends (``session.force_spinning_stop``).

    Without the last, an idle session's threads keep spinning while another session runs: two INT8 students
    timed side by side in one process on 2 cores ran 1.51 ms at p50 (p95 6.2) instead of 1.09 ms (p95 1.39)
    alone. With it, side by side matches alone (1.41 vs 1.43 ms, same run); a session alone paid 0-4% for it in
    quiet runs (1.055 vs 1.012-1.052 ms), within the machine's noise. ``session_config`` entries override it."""
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3  # errors only: graph clean-up notes ("Removing initializer ...") are not the user's
    opts.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    config = {"session.force_spinning_stop": "1", **(session_config or {})}
    for key, value in config.items():
        opts.add_session_config_entry(str(key), str(value))
    return opts


def ort_session(ort, path, threads=None, level="all", session_config=None, provider="CPUExecutionProvider"):
    """An ONNX Runtime session of the model file ``path`` on ``provider``, with :func:`ort_session_options`: how a
    bundle's handler and the remote runner open a model."""
    opts = ort_session_options(ort, threads, level, session_config)
    return ort.InferenceSession(path, sess_options=opts, providers=[provider])


# --- outputs read as a task reads them, and a generator's step feeds -----------------------------------------------

def entities(text, tags, probs, spans):
    """Entities of one text from its words' tags (IOB1/IOB2/IOBES; ``B-`` or a change of type starts one), their
    top-tag probabilities and character spans: ``[{"type", "text", "start", "end", "score"}]``."""
    found, cur = [], None
    for tag, p, (a, b) in zip(tags, probs, spans):
        prefix, kind = (tag.split("-", 1) + [""])[:2] if tag != "O" else ("O", "")
        if prefix == "O" or prefix in ("B", "S", "U") or cur is None or cur["type"] != kind:
            if cur is not None:
                found.append(cur)
            cur = None if prefix == "O" else {"type": kind, "start": a, "end": b, "scores": [p]}
        else:
            cur["end"], cur["scores"] = b, cur["scores"] + [p]
        if cur is not None and prefix in ("E", "S", "L", "U"):
            found.append(cur)
            cur = None
    if cur is not None:
        found.append(cur)
    return [{"type": e["type"], "text": text[e["start"]:e["end"]], "start": e["start"], "end": e["end"],
             "score": round(sum(e["scores"]) / len(e["scores"]), 6)} for e in found]


def concatenate_rows(outs):
    """Batches of outputs as one array; per-token or per-word outputs (``[batch, tokens, labels]``, as wide as each
    batch's longest row) padded with NaN to the widest batch."""
    import numpy as np

    if len(outs) > 1 and outs[0].ndim >= 3 and len(set(o.shape[1] for o in outs)) > 1:
        width = max(o.shape[1] for o in outs)
        outs = [np.pad(o.astype(np.float32, copy=False), [(0, 0), (0, width - o.shape[1])] + [(0, 0)] * (o.ndim - 2),
                       constant_values=np.nan) for o in outs]
    return np.concatenate(outs, axis=0)


def decoder_tokens(feeds):
    """The token ids of a generator's step feeds (``[batch, tokens]``): what the tokenizer's ``input_ids`` holds."""
    return feeds["input_ids"]


def token_feeds(ids, attended):
    """A generator's step feeds for the token ids ``ids`` (``[batch, tokens]``) with ``attended`` positions in the
    attention mask (the cache's and these)."""
    import numpy as np

    ids = np.asarray(ids, dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones((len(ids), attended), dtype=np.int64)}


def decoder_feeds(feeds, input_names):
    """A generator's step feeds completed for a graph that takes more than the tokens and the attention mask:
    ``position_ids`` made from the mask (the new tokens' positions among its ones: ONNX Runtime GenAI's
    MultiHeadAttention form, OpenVINO's stateful IRs) and ``beam_idx`` 0 (batch rows, no beams) where the graph takes
    them and the feeds lack them."""
    import numpy as np

    if "input_ids" not in feeds:  # not a generator's step (a recurrent state's chunk): nothing to complete
        return feeds
    feeds = dict(feeds)
    tokens = decoder_tokens(feeds)
    if "position_ids" in input_names and "position_ids" not in feeds and "attention_mask" in feeds:
        positions = np.maximum(np.cumsum(feeds["attention_mask"], axis=1) - 1, 0)[:, -tokens.shape[1]:]
        feeds["position_ids"] = positions.astype(np.int64)
    if "beam_idx" in input_names and "beam_idx" not in feeds:
        feeds["beam_idx"] = np.zeros(len(tokens), dtype=np.int32)
    return feeds


def first_subtokens(scores, word_ids):
    """Token-level scores ``[batch, tokens, labels]`` read at each word's first sub-token: ``[batch, words, labels]``
    (words: the most any row has), NaN where a row has fewer words or a word was cut off by truncation."""
    import numpy as np

    width = int(word_ids.max()) + 1 if word_ids.size else 0
    out = np.full((scores.shape[0], width, scores.shape[-1]), np.nan, dtype=np.float32)
    for row in range(scores.shape[0]):
        ids = word_ids[row]
        first = np.flatnonzero((ids >= 0) & np.r_[True, ids[1:] != ids[:-1]])
        out[row, ids[first]] = scores[row, first]
    return out


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


# -- streams: a model called chunk by chunk, the state each call returns fed into the next ------------------------------

class StreamCalls(object):
    """A streaming model's calls (the manifest's ``stream``: Silero VAD's 512 new samples after the previous call's last
    64, ``stateN`` fed back as ``state``, ``sr`` 16000 on every call), the one loop the host's runtimes, the remote
    runner and the serverless handler run. ``spec`` is the manifest's ``stream`` and ``inputs`` its input tensors
    (mappings of name, dtype, shape). A sequence is one stream: the state starts at zeros and resets per sequence."""

    def __init__(self, spec, inputs):
        self.input = spec["input"]
        self.chunk = int(spec["chunk"])
        self.context = int(spec.get("context") or 0)
        self.state = dict(spec.get("state") or {})  # output -> the input it feeds on the next call
        self.constants = dict(spec.get("constants") or {})
        self.dtypes = dict((t["name"], t["dtype"]) for t in inputs)
        self.shapes = dict((t["name"], list(t["shape"])) for t in inputs)

    @classmethod
    def from_manifest(cls, manifest):
        """The calls of a manifest (a mapping, as ``manifest.json`` reads) that has a ``stream``, else None: the stream
        feeds the main entry (a schema-1 manifest's one graph)."""
        if not manifest.get("stream"):
            return None
        return cls(manifest["stream"], manifest["entries"][0]["inputs"] if "entries" in manifest else manifest["inputs"])

    @property
    def window(self):
        return self.context + self.chunk

    def split(self, values):
        """A sequence (its new values along the last axis, ``[..., n]``) as the calls' inputs ``[calls, ...,
        context + chunk]``: zeros before the first call's context, the last chunk padded with zeros."""
        import numpy as np

        x = np.asarray(values, dtype=self.dtypes[self.input])
        n = x.shape[-1]
        calls = max(1, -(-n // self.chunk))
        lead = x.shape[:-1]
        x = np.concatenate([np.zeros(lead + (self.context,), x.dtype), x,
                            np.zeros(lead + (calls * self.chunk - n,), x.dtype)], axis=-1)
        return np.stack([x[..., i * self.chunk:i * self.chunk + self.window] for i in range(calls)])

    def initial_state(self, batch=1):
        """The state before the first call, by input: zeros, a batch axis ``batch`` long, another open axis 0 long."""
        import numpy as np

        out = {}
        for name in self.state.values():
            shape = [d if isinstance(d, int) and d >= 0 else (batch if "batch" in str(d).lower() else 0)
                     for d in self.shapes[name]]
            out[name] = np.zeros(shape, dtype=self.dtypes[name])
        return out

    def constant_feeds(self):
        import numpy as np

        return dict((name, np.asarray(v, dtype=self.dtypes[name])) for name, v in self.constants.items())

    def first_call(self, feeds):
        """Feeds of the stream's input (a batch of calls) completed for one call from the initial state: what a model
        run one call at a time (a parity sample, a timed batch, a cold start) takes."""
        rows = len(feeds[self.input])
        out = dict(feeds)
        out.update(self.constant_feeds())
        out.update(self.initial_state(rows))
        return out

    def run(self, call, values):
        """Every call of one sequence in order, the state carried: ``call(feeds)`` returns the outputs by name; the
        result is each output that is not state, the calls stacked: ``{name: [calls, ...]}`` (batch axis 1 dropped)."""
        import numpy as np

        state, seen = self.initial_state(), {}
        constants = self.constant_feeds()
        for x in self.split(values):
            feeds = {self.input: x[None]}
            feeds.update(constants)
            feeds.update(state)
            out = call(feeds)
            state = dict((name, out[o]) for o, name in self.state.items())
            for name, v in out.items():
                if name not in self.state:
                    seen.setdefault(name, []).append(np.asarray(v)[0])
        return dict((name, np.stack(v)) for name, v in seen.items())
