"""Serverless inference handler written by ``edgecompress package``.

Needs only onnxruntime, numpy and tokenizers (text) or Pillow (images), never torch, transformers or
edgecompress. Everything
about the model comes from ``model_config.json`` beside this file. The tokenizer and the ONNX Runtime
session are created at import time (module scope), so a platform that keeps the process warm pays
for them once per cold start, not per request.

Event (a direct invocation, or an HTTP event whose ``body`` is that JSON):
    {"texts": ["first text", "second text"]}   or   {"text": "one text"}
    optional: "text_pairs" / "text_pair" for sentence-pair classifiers.
    image models: {"images": ["<base64 of a PNG/JPEG file>", ...]}   or   {"image": "<base64>"}
    array models (an adopted file fed arrays): {"samples": [{"INPUT": [[...]], ...}, ...]}   or   {"inputs": {...}}
        (one nested JSON list per graph input and sample, of the model's per-sample shape)
    streaming models (a manifest with a stream: Silero VAD): {"sequence": [v0, v1, ...]}   or
        {"sequences": [[...], ...]}: each sequence (audio samples in [-1, 1]) is run call by call, chunk after
        context, the state each call returns fed into the next and reset per sequence
Result:
    classifiers: {"predictions": [{"label": "positive", "score": 0.97, "scores": {...}}, ...]}
    token classifiers (named entities): {"entities": [[{"type": "PER", "text": "Peter Blackburn", "start": 0,
        "end": 15, "score": 0.99}, ...], ...]}  (one list per text; start/end: character offsets in the text)
    encoders:    {"embeddings": [[...], ...], "dimension": 384}
    other models: {"outputs": [...], "shape": [...]}  (the first output, one entry per sample: a detector's boxes
        before NMS, a segmenter's maps, a regressor's values, CTC scores)
    streaming models: {"outputs": [[...per call...], ...], "calls": [n, ...]}  (one list per sequence; with a
        threshold in the postprocess, "decisions": [[0/1 per call], ...] too)

Environment overrides: EDGECOMPRESS_THREADS (intra-op threads), EDGECOMPRESS_MAX_BATCH.
"""

import base64
import json
import os

# pooling, session options and streaming calls shared with edgecompress's runtimes and its remote runner
# (compress/device/shipped.py), and the feeds (the tokenizer, images) they build (compress/device/feeds.py)
import edgecompress_device as device
import edgecompress_feeds as feeds
import numpy as np
import onnxruntime as ort

_HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(_HERE, "model_config.json"), encoding="utf-8") as _f:
    CONFIG = json.load(_f)

THREADS = int(os.environ.get("EDGECOMPRESS_THREADS") or CONFIG.get("threads") or 1)
MAX_BATCH = int(os.environ.get("EDGECOMPRESS_MAX_BATCH") or CONFIG.get("max_batch_size") or 32)
LABELS = CONFIG.get("labels") or []
POOLING = (CONFIG.get("postprocess") or {}).get("pooling")
WORDS = bool((CONFIG.get("preprocess") or {}).get("words"))  # a token classifier: entities out
NORMALIZE = bool((CONFIG.get("postprocess") or {}).get("normalize"))
#: tasks whose output is class scores per sample (softmax, top label); any other task returns its output as it is
CLASSIFIERS = ("text-classification", "image-classification", "generic")



SESSION = device.ort_session(ort, os.path.join(_HERE, CONFIG["model_file"]), THREADS)
INPUT_NAMES = [i.name for i in SESSION.get_inputs()]
# the feeds as edgecompress builds them everywhere, from the artifact's input description (compress/device/feeds.py)
FEEDS = feeds.make_feeds(_HERE, CONFIG["preprocess"], INPUT_NAMES, CONFIG["max_length"])
OUTPUT_NAME = CONFIG.get("output_name") or SESSION.get_outputs()[0].name
# a streaming model's calls (compress/device/shipped.py: StreamCalls), None for any other
STREAM = device.StreamCalls(CONFIG["stream"], CONFIG["inputs"]) if CONFIG.get("stream") else None
STREAM_OUTPUTS = [o.name for o in SESSION.get_outputs()]


class BadRequest(ValueError):
    """The event is not {"texts": [...]} or {"text": "..."}."""


def _images(event):
    """Raw image bytes from {"images": [base64, ...]} or {"image": base64}."""
    if not isinstance(event, dict):
        raise BadRequest("the event must be a JSON object with 'images' (a list of base64 strings) or 'image'")
    items = event["images"] if "images" in event else [event["image"]] if "image" in event else None
    if items is None:
        raise BadRequest("the event has neither 'images' (a list of base64-encoded image files) nor 'image'")
    if not isinstance(items, list) or not items or not all(isinstance(t, str) for t in items):
        raise BadRequest("'images' must be a non-empty list of base64 strings")
    try:
        return [base64.b64decode(t, validate=True) for t in items], None
    except ValueError as e:
        raise BadRequest(f"an image is not valid base64: {e}") from None


def _arrays(event):
    """Samples from {"samples": [{input: nested list}, ...]} or {"inputs": {input: nested list}} (one sample)."""
    if not isinstance(event, dict):
        raise BadRequest("the event must be a JSON object with 'samples' (a list of {input: array}) or 'inputs'")
    items = event["samples"] if "samples" in event else [event["inputs"]] if "inputs" in event else None
    if items is None:
        raise BadRequest("the event has neither 'samples' (a list of {input name: nested list}) nor 'inputs'; "
                         "inputs: " + ", ".join(FEEDS.input_names))
    if not isinstance(items, list) or not items or not all(isinstance(t, dict) for t in items):
        raise BadRequest("'samples' must be a non-empty list of objects mapping input name to a nested list")
    try:
        return [FEEDS.sample(t, "sample %d" % i) for i, t in enumerate(items)], None
    except (ValueError, TypeError) as e:
        raise BadRequest(str(e)) from None


def _sequences(event):
    """A streaming model's sequences from {"sequence": [...]} or {"sequences": [[...], ...]}."""
    if not isinstance(event, dict):
        raise BadRequest("the event must be a JSON object with 'sequence' (a list of numbers) or 'sequences'")
    items = event["sequences"] if "sequences" in event else [event["sequence"]] if "sequence" in event else None
    if not isinstance(items, list) or not items:
        raise BadRequest("the event has neither 'sequence' (a list of numbers, e.g. audio samples in [-1, 1]) nor "
                         "'sequences' (a list of such lists)")
    try:
        values = [np.asarray(v, dtype=np.float64) for v in items]
    except (ValueError, TypeError) as e:
        raise BadRequest(f"a sequence is not a list of numbers: {e}") from None
    if any(v.ndim != 1 or not v.size or not np.isfinite(v).all() for v in values):
        raise BadRequest("each sequence must be a non-empty flat list of finite numbers")
    return values, None


def _stream_result(sequences, _pairs=None):
    """Each sequence call by call, the state carried: the first output per call (and decisions at the threshold)."""
    def call(feed):
        return dict(zip(STREAM_OUTPUTS, SESSION.run(STREAM_OUTPUTS, feed)))

    outs = [STREAM.run(call, v)[OUTPUT_NAME].astype(np.float64) for v in sequences]
    result = {"outputs": [o.tolist() for o in outs], "calls": [len(o) for o in outs]}
    post = CONFIG.get("postprocess") or {}
    if "threshold" in post:
        probs = [o if post.get("scores_are_probabilities") else 1 / (1 + np.exp(-o)) for o in outs]
        result["decisions"] = [(p >= (post.get("threshold") or 0.5)).astype(int).tolist() for p in probs]
    return result


def _inputs(event):
    if STREAM is not None:
        return _sequences(event)
    if FEEDS.kind == "arrays":
        return _arrays(event)
    return _images(event) if FEEDS.kind == "image" else _texts(event)


def _texts(event):
    if not isinstance(event, dict):
        raise BadRequest("the event must be a JSON object with 'texts' (a list of strings) or 'text'")
    if "texts" in event:
        texts, pairs = event["texts"], event.get("text_pairs")
    elif "text" in event:
        texts = [event["text"]]
        pairs = [event["text_pair"]] if event.get("text_pair") is not None else None
    else:
        raise BadRequest("the event has neither 'texts' (a list of strings) nor 'text'")
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise BadRequest("'texts' must be a non-empty list of strings")
    if pairs is not None and (not isinstance(pairs, list) or len(pairs) != len(texts)
                              or not all(isinstance(t, str) for t in pairs)):
        raise BadRequest("'text_pairs' must be a list of strings as long as 'texts'")
    return texts, pairs


def _pool(hidden, mask):
    return device.pool(hidden, mask, POOLING or "mean", NORMALIZE)


def predict(texts, pairs=None):
    """Raw model outputs for a list of texts: logits (classifiers) or pooled embeddings (encoders)."""
    outs = []
    for i in range(0, len(texts), MAX_BATCH):
        try:
            feed, mask = FEEDS.encode_with_mask(texts[i:i + MAX_BATCH],
                                                pairs[i:i + MAX_BATCH] if pairs is not None else None)
        except OSError as e:  # Pillow: not an image file it can read
            raise BadRequest(f"an image cannot be decoded: {e}") from None
        out = SESSION.run([OUTPUT_NAME], feed)[0].astype(np.float32, copy=False)
        outs.append(_pool(out, mask) if POOLING else out)
    return np.concatenate(outs, axis=0)


def _softmax(x):
    z = np.exp(x - x.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def _entities(texts):
    """Each text's entities: the tokenizer's words tagged at their first sub-token, tags grouped into entities."""
    found = []
    for i in range(0, len(texts), MAX_BATCH):
        batch = texts[i:i + MAX_BATCH]
        feed, word_ids, spans = FEEDS.encode_spans(batch)
        out = SESSION.run([OUTPUT_NAME], feed)[0].astype(np.float64)
        words = device.first_subtokens(out, word_ids)
        for text, row, sp in zip(batch, words, spans):
            row = _softmax(row[:len(sp)])
            top = row.argmax(-1)
            found.append(device.entities(text, [LABELS[k] for k in top], [float(row[j, k]) for j, k in enumerate(top)],
                                         sp))
    return {"entities": found}


def _result(texts, pairs):
    if WORDS:
        return _entities(texts)
    out = predict(texts, pairs)
    if POOLING:
        return {"embeddings": out.tolist(), "dimension": int(out.shape[-1])}
    if not LABELS or CONFIG.get("task") not in CLASSIFIERS:  # not a classifier: the output itself
        return {"outputs": out.tolist(), "shape": list(out.shape)}
    z = out.astype(np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    probs = z / z.sum(axis=-1, keepdims=True)
    names = LABELS if len(LABELS) == probs.shape[-1] else [str(i) for i in range(probs.shape[-1])]
    preds = []
    for row in probs:
        k = int(row.argmax())
        preds.append({"label": names[k], "score": float(row[k]),
                      "scores": {n: float(p) for n, p in zip(names, row)}})
    return {"predictions": preds}


def handler(event, context=None):
    """Entry point (module.function = handler.handler)."""
    http = isinstance(event, dict) and "body" in event and not {"texts", "text", "images", "image", "samples",
                                                                "inputs", "sequence", "sequences"} & set(event)
    try:
        if http:
            body = event.get("body") or ""
            if event.get("isBase64Encoded"):
                body = base64.b64decode(body).decode("utf-8")
            try:
                event = json.loads(body)
            except ValueError as e:
                raise BadRequest(f"the request body is not JSON: {e}") from None
        result = (_stream_result if STREAM is not None else _result)(*_inputs(event))
    except BadRequest as e:
        if http:
            return {"statusCode": 400, "headers": {"content-type": "application/json"},
                    "body": json.dumps({"error": str(e)})}
        raise
    if http:
        return {"statusCode": 200, "headers": {"content-type": "application/json"}, "body": json.dumps(result)}
    return result
