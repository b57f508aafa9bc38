"""Feeds from a manifest's input description, the one seam from raw inputs to a model's tensors: text through the
tokenizer (:class:`TextFeeds`), images with numpy and Pillow (:class:`ImageFeeds`), arrays stacked as they are
(:class:`ArrayFeeds`); :func:`make_feeds` picks one by the description's ``kind``.

A part of the device code (:data:`compress.device.shipped.SHIPPED_FILES`): shipped as ``edgecompress_feeds`` beside
the remote runner and in every serverless bundle, whose handler builds its feeds with it, and used by the runtime
adapters and the data readers here, so a device and this machine feed a model alike. Standard library and numpy, plus
``tokenizers`` for text and Pillow for images, each imported where used; Python 3.8+; it imports no other part.
"""

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
