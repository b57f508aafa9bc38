"""The code that runs on a device, in one place: feeds from the manifest's input description, pooling, ONNX Runtime
session options, the timing loop and streaming calls; the host facts (the CPU's name, file hashes, peak memory) are
its other part, :mod:`compress.device.facts`.

It is shipped as ``edgecompress_device.py`` beside the remote runner (``validate --remote``) and inside every
serverless bundle (``package``), and the runtime adapters here use it too, so what a device measures and what
this machine measures come from the same code. Standard library and numpy, plus ``tokenizers`` for text feeds and
Pillow for image feeds, each imported where used; Python 3.8+: it must import on a bare board and in a serverless
function.
"""

#: the name it ships under, beside the remote runner and in a bundle
SHIPPED_NAME = "edgecompress_device.py"
#: every part of the device code, by the name it ships under (beside the remote runner, in a bundle): its source file
#: in compress/device; the parts import nothing from each other
SHIPPED_FILES = {SHIPPED_NAME: "shipped.py", "edgecompress_facts.py": "facts.py"}

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


# --- inputs: the one seam from a manifest's description to a model's feeds -----------------------------------
#: the input kinds a manifest's ``preprocess`` may describe (a new kind joins this list, not every caller)
INPUT_KINDS = ("text", "image", "arrays")


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

    def arrays(self, texts, pairs=None, pad_to=None, spans=False):
        """Every tensor a tokenizer makes (``input_ids``, ``attention_mask``, ``token_type_ids``) for a batch, and the
        word each token belongs to (``word_ids``, -1 for special tokens and padding); ``spans``: also each word's
        (start, end) characters in its text (``spans``, a list per text)."""
        import numpy as np

        limit = min(pad_to, self.max_length) if pad_to else self.max_length
        self.tokenizer.enable_truncation(max_length=limit)
        if pad_to:
            self.tokenizer.enable_padding(pad_id=self.pad_id, length=limit)
        else:
            self.tokenizer.enable_padding(pad_id=self.pad_id)
        if pairs is not None and len(pairs) != len(texts):
            raise ValueError("texts and pairs differ in length")
        words = bool(texts) and not isinstance(texts[0], str)  # pre-split texts: lists of words
        batch = list(zip(texts, pairs)) if pairs is not None else list(texts)
        enc = self.tokenizer.encode_batch([list(t) for t in batch] if words and pairs is None else batch,
                                          is_pretokenized=words)
        arrays = {
            "input_ids": np.asarray([e.ids for e in enc], dtype=np.int64),
            "attention_mask": np.asarray([e.attention_mask for e in enc], dtype=np.int64),
            "token_type_ids": np.asarray([e.type_ids for e in enc], dtype=np.int64),
        }
        arrays["word_ids"] = np.asarray([[-1 if w is None else w for w in e.word_ids] for e in enc], dtype=np.int64)
        if spans:
            arrays["spans"] = [_word_spans(e) for e in enc]
        return arrays

    def _feeds(self, arrays):
        """Only the inputs the model takes, in its order."""
        return {name: arrays[name] for name in self.input_names if name in arrays}

    def encode(self, texts, pairs=None, pad_to=None):
        """The feeds of a batch: only the inputs the model takes, in its order."""
        return self._feeds(self.arrays(texts, pairs, pad_to))

    def encode_with_mask(self, texts, pairs=None, pad_to=None):
        """``(feeds, attention_mask)``: the mask pools token states even where the graph does not take it."""
        arrays = self.arrays(texts, pairs, pad_to)
        return self._feeds(arrays), arrays["attention_mask"]

    def encode_words(self, texts, pad_to=None):
        """``(feeds, word_ids)`` of texts split into words (lists of words; a string is split at white space)."""
        arrays = self.arrays([t.split() if isinstance(t, str) else list(t) for t in texts], None, pad_to)
        return self._feeds(arrays), arrays["word_ids"]

    def encode_spans(self, texts):
        """``(feeds, word_ids, spans)`` of raw strings for a token classifier: the tokenizer's own words (its
        pre-tokenizer splits at white space and punctuation, as CoNLL does) and each word's (start, end) characters."""
        arrays = self.arrays(list(texts), spans=True)
        return self._feeds(arrays), arrays["word_ids"], arrays["spans"]

    def windows(self, questions, contexts, max_length, stride):
        """``(arrays, offsets, example)`` of questions with their contexts for extractive question answering: each
        pair as windows of at most ``max_length`` tokens, the question first, the context cut (``only_second``) into
        windows sharing ``stride`` tokens (Hugging Face's ``return_overflowing_tokens`` with ``stride``: the same
        ``tokenizers`` code). ``arrays``: every tensor the tokenizer makes, ``[windows, tokens]`` padded to the
        longest; ``offsets``: ``[windows, tokens, 2]`` each token's characters in its context, -1 outside it;
        ``example``: the question of each window. A question that leaves its context fewer than 8 tokens is a
        ValueError."""
        import numpy as np

        tok = self.tokenizer
        specials = tok.num_special_tokens_to_add(True)
        tok.no_padding()
        rows, example = [], []
        try:
            for i, (q, c) in enumerate(zip(questions, contexts)):
                room = max_length - specials - len(tok.encode(q, add_special_tokens=False).ids)
                if room < 8:
                    raise ValueError("question %d (%r) leaves %d of %d tokens for its context"
                                     % (i + 1, q[:50], max(room, 0), max_length))
                tok.enable_truncation(max_length, stride=min(stride, room // 2), strategy="only_second")
                enc = tok.encode(q, c)
                for e in [enc] + list(enc.overflowing):
                    rows.append(e)
                    example.append(i)
        finally:
            tok.no_truncation()
        width = max([len(e.ids) for e in rows] or [0])
        arrays = {}
        for name, attr in (("input_ids", "ids"), ("attention_mask", "attention_mask"), ("token_type_ids", "type_ids")):
            arr = np.full((len(rows), width), self.pad_id if attr == "ids" else 0, dtype=np.int64)
            for r, e in enumerate(rows):
                arr[r, :len(e.ids)] = getattr(e, attr)
            arrays[name] = arr
        offsets = np.full((len(rows), width, 2), -1, dtype=np.int64)
        for r, e in enumerate(rows):
            context = np.array([s == 1 for s in e.sequence_ids], dtype=bool)
            offsets[r, :len(e.ids)][context] = np.asarray(e.offsets, dtype=np.int64).reshape(-1, 2)[context]
        return arrays, offsets, np.asarray(example, dtype=np.int64)


def _word_spans(encoding):
    """Each word's (start, end) characters, from its tokens' offsets."""
    row = {}
    for w, (a, b) in zip(encoding.word_ids, encoding.offsets):
        if w is not None:
            lo, hi = row.get(w, (a, b))
            row[w] = (min(lo, a), max(hi, b))
    return [row[w] for w in sorted(row)]


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


def make_feeds(directory, preprocess, input_names, max_length):
    """A model's feed builder from its manifest's ``preprocess`` description (a dict; ``kind`` picks the class)."""
    spec = dict(preprocess or {})
    kind = spec.get("kind", "text")
    if kind == "text":
        return TextFeeds.from_dir(directory, input_names, max_length, spec.get("tokenizer_file") or "tokenizer.json",
                                  spec.get("pad_id"))
    if kind == "image":
        return ImageFeeds.from_spec(spec)
    if kind == "arrays":
        return ArrayFeeds.from_spec(spec)
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


def letterbox_geometry(w, h, height, width, align="center"):
    """(new_w, new_h, left, top) of a w x h image letterboxed into height x width: scaled by the smaller ratio to
    new_w x new_h and pasted at (left, top), centred or (``align="top-left"``, YOLOX's) at the corner. A point (x, y)
    of the image lands at (x * new_w / w + left, ...)."""
    if align not in ("center", "top-left"):
        raise ValueError("letterbox_align must be center or top-left, not %r" % (align,))
    scale = min(float(height) / h, float(width) / w)
    new_w, new_h = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
    if align == "top-left":
        return new_w, new_h, 0, 0
    return new_w, new_h, (width - new_w) // 2, (height - new_h) // 2


class ImageFeeds(object):
    """An image model's feeds from its manifest's ``image`` description, with numpy and Pillow only: decode (a path,
    bytes or a numpy array), convert to the channel order, resize (exactly, or the shortest edge keeping the aspect
    ratio) with the teacher's interpolation, centre-crop, rescale, normalise with mean/std, lay out NCHW or NHWC."""

    kind = "image"
    #: Pillow's resampling filters by name (the numbers are Pillow's own constants, stable across versions)
    FILTERS = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}

    def __init__(self, input_name="pixel_values", size=(224, 224), resize="exact", crop=None, interpolation="bilinear",
                 rescale=1.0 / 255.0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), channels="RGB", layout="NCHW",
                 crop_offset="floor", pad_value=114, letterbox_align="center"):
        if resize not in ("exact", "shortest_edge", "letterbox"):
            raise ValueError("resize must be 'exact', 'shortest_edge' or 'letterbox', not %r" % (resize,))
        self.pad_value = int(pad_value)
        letterbox_geometry(1, 1, 1, 1, letterbox_align)  # refuses an unknown alignment
        self.letterbox_align = letterbox_align
        if interpolation not in self.FILTERS:
            raise ValueError("unknown interpolation %r (known: %s)" % (interpolation, ", ".join(sorted(self.FILTERS))))
        if channels not in ("RGB", "BGR", "L"):
            raise ValueError("channels must be RGB, BGR or L, not %r" % (channels,))
        if layout not in ("NCHW", "NHWC"):
            raise ValueError("layout must be NCHW or NHWC, not %r" % (layout,))
        if crop_offset not in ("floor", "round"):
            raise ValueError("crop_offset must be floor or round, not %r" % (crop_offset,))
        self.crop_offset = crop_offset
        self.input_names = [input_name]
        self.size = [int(s) for s in size]
        self.resize, self.crop = resize, ([int(c) for c in crop] if crop else None)
        self.interpolation, self.rescale = interpolation, float(rescale)
        n = 1 if channels == "L" else 3
        if len(mean) != n or len(std) != n:
            raise ValueError("mean and std need %d value(s) for %s images" % (n, channels))
        self.mean, self.std = [float(m) for m in mean], [float(s) for s in std]
        self.channels, self.layout = channels, layout

    @classmethod
    def from_spec(cls, spec):
        keys = ("input_name", "size", "resize", "crop", "interpolation", "rescale", "mean", "std", "channels", "layout",
                "crop_offset", "pad_value", "letterbox_align")
        return cls(**dict((k, spec[k]) for k in keys if spec.get(k) is not None))

    def output_shape(self):
        """(height, width) of every preprocessed image."""
        if self.crop:
            return tuple(self.crop)
        if self.resize in ("exact", "letterbox"):
            return tuple(self.size)
        return None  # shortest-edge resize without a crop keeps each image's aspect ratio

    def image(self, item):
        """A Pillow image in the model's channel order (``L`` or ``RGB``; BGR is swapped after decoding)."""
        import io

        from PIL import Image

        if isinstance(item, Image.Image):
            img = item
        elif isinstance(item, (bytes, bytearray)):
            img = Image.open(io.BytesIO(item))
        elif hasattr(item, "__array__"):
            import numpy as np

            arr = np.asarray(item)
            if arr.dtype != np.uint8:
                arr = np.clip(arr, 0, 255).astype(np.uint8)
            img = Image.fromarray(arr[..., 0] if arr.ndim == 3 and arr.shape[-1] == 1 else arr)
        else:
            img = Image.open(str(item))
        return img.convert("L" if self.channels == "L" else "RGB")

    def pixels(self, item):
        """One preprocessed image, float32, channels last (H, W, C)."""
        import numpy as np

        img = self.image(item)
        resample = self.FILTERS[self.interpolation]
        if self.resize == "exact":
            img = img.resize((self.size[1], self.size[0]), resample=resample)
        elif self.resize == "letterbox":
            img = self._letterbox(img, resample)
        else:
            w, h = img.size  # the long side truncated, as Hugging Face image processors and torchvision compute it
            short = self.size[0]
            if w <= h:
                img = img.resize((short, max(1, int(short * h / float(w)))), resample=resample)
            else:
                img = img.resize((max(1, int(short * w / float(h))), short), resample=resample)
        if self.crop:
            w, h = img.size
            ch, cw = self.crop
            if ch > h or cw > w:
                raise ValueError("crop %dx%d is larger than the resized image %dx%d" % (ch, cw, h, w))
            if self.crop_offset == "floor":  # Hugging Face image processors
                top, left = (h - ch) // 2, (w - cw) // 2
            else:  # torchvision / timm: int(round(...))
                top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
            img = img.crop((left, top, left + cw, top + ch))
        x = np.asarray(img, dtype=np.float32)
        if x.ndim == 2:
            x = x[..., None]
        if self.channels == "BGR":
            x = x[..., ::-1]
        x = x * self.rescale
        return (x - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)

    def _letterbox(self, img, resample):
        from PIL import Image

        height, width = self.size
        new_w, new_h, left, top = letterbox_geometry(img.size[0], img.size[1], height, width, self.letterbox_align)
        fill = self.pad_value if img.mode == "L" else (self.pad_value,) * 3
        canvas = Image.new(img.mode, (width, height), fill)
        canvas.paste(img.resize((new_w, new_h), resample=resample), (left, top))
        return canvas

    def encode(self, items, pairs=None, pad_to=None):
        """The feeds of a batch: ``{input_name: float32 array}`` in the model's layout (``pairs``/``pad_to``: text only)."""
        import numpy as np

        if pairs is not None:
            raise ValueError("image models take no text pairs")
        batch = np.stack([self.pixels(it) for it in items]).astype(np.float32, copy=False)
        if self.layout == "NCHW":
            batch = np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
        return {self.input_names[0]: batch}

    def encode_with_mask(self, items, pairs=None, pad_to=None):
        return self.encode(items, pairs, pad_to), None


class ArrayFeeds(object):
    """A model's feeds from its manifest's ``arrays`` description: each sample is a mapping of input name to one
    array (nested lists, as JSON gives, are accepted); a batch stacks them along a new first axis in the dtype the
    graph takes. A sample lacking an input, or of another per-sample shape, is a ValueError naming it."""

    kind = "arrays"

    def __init__(self, shapes, dtypes):
        self.shapes = dict((k, list(v)) for k, v in shapes.items())
        self.dtypes = dict(dtypes)
        self.input_names = list(self.shapes)

    @classmethod
    def from_spec(cls, spec):
        return cls(spec["shapes"], spec["dtypes"])

    def sample(self, item, where="sample"):
        """One sample's arrays, checked against the per-sample shapes and cast to the graph's dtypes."""
        import numpy as np

        if not isinstance(item, dict):
            raise ValueError("%s: expected a mapping of input name to array, got %s" % (where, type(item).__name__))
        out = {}
        for name in self.input_names:
            if name not in item:
                raise ValueError("%s: no array for input %r (inputs: %s)" % (where, name, ", ".join(self.input_names)))
            arr = np.asarray(item[name])
            want = self.shapes[name]
            if arr.ndim != len(want) or any(w is not None and w != d for w, d in zip(want, arr.shape)):
                raise ValueError("%s: input %r has shape %s; the model takes %s per sample"
                                 % (where, name, list(arr.shape), ["?" if w is None else w for w in want]))
            out[name] = arr.astype(self.dtypes[name], copy=False)
        return out

    def encode(self, items, pairs=None, pad_to=None):
        """The feeds of a batch: ``{input name: array}``, samples stacked on the first axis."""
        import numpy as np

        if pairs is not None:
            raise ValueError("array models take no text pairs")
        rows = [self.sample(it, "sample %d" % i) for i, it in enumerate(items)]
        return dict((name, np.ascontiguousarray(np.stack([r[name] for r in rows]))) for name in self.input_names)

    def encode_with_mask(self, items, pairs=None, pad_to=None):
        return self.encode(items, pairs, pad_to), None


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
        """The calls of a manifest (a mapping, as ``manifest.json`` reads) that has a ``stream``, else None."""
        return cls(manifest["stream"], manifest["inputs"]) if manifest.get("stream") else None

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
