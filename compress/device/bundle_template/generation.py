"""Serverless text-generation handler written by ``edgecompress package`` for a causal LM (task text-generation).

Needs only onnxruntime, numpy and tokenizers, never torch, transformers, onnxruntime-genai or edgecompress.
Everything about the model comes from ``model_config.json`` beside this file. The tokenizer and the ONNX Runtime
session are created at import time (module scope), so a platform that keeps the process warm pays for them once per
cold start, not per request.

Decoding is greedy through the KV cache that the graph (ONNX Runtime GenAI's builder format) takes as ordinary
inputs: one prefill of the prompt, then one step per new token with ``past_key_values.N.key/value`` fed back from
the previous call's ``present.N.key/value``. The feeds are completed by the device module shared with edgecompress's
runtimes (``edgecompress_device.decoder_feeds``: ``position_ids`` from the attention mask where the graph takes them).

Event (a direct invocation, or an HTTP event whose ``body`` is that JSON):
    {"prompt": "Once upon a time", "max_new_tokens": 32}
    max_new_tokens is optional (absent or null: model_config.json's generation.default_new_tokens) and at most
    generation.max_new_tokens; the prompt's tokens (BOS included, as the tokenizer adds it) plus max_new_tokens must
    fit the model's context (generation.context tokens).
Result:
    {"text": " there was a little girl ...",   the continuation (what follows the prompt's own text)
     "finish_reason": "eos" or "length",
     "prompt_tokens": 5, "new_tokens": 32, "token_ids": [...],   (the new tokens; an end token included)
     "timings": {"prefill_ms": ..., "decode_ms": ..., "decode_tokens_per_s": ...}}
A bad event raises ValueError (a direct invocation) or answers HTTP 400 with {"error": "..."} (an HTTP event).

Environment overrides: EDGECOMPRESS_THREADS (intra-op threads), EDGECOMPRESS_MAX_NEW_TOKENS (a lower cap).
"""

import base64
import json
import os
import time

# the feeds completed as edgecompress's runtimes complete them (position_ids, beam_idx) and the session options
# (compress/device/shipped.py)
import edgecompress_device as device
import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

_HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(_HERE, "model_config.json"), encoding="utf-8") as _f:
    CONFIG = json.load(_f)

GEN = CONFIG["generation"]
THREADS = int(os.environ.get("EDGECOMPRESS_THREADS") or CONFIG.get("threads") or 1)
CONTEXT = int(GEN["context"])
MAX_NEW_TOKENS = min(int(os.environ.get("EDGECOMPRESS_MAX_NEW_TOKENS") or GEN["max_new_tokens"]),
                     int(GEN["max_new_tokens"]))
DEFAULT_NEW_TOKENS = min(int(GEN["default_new_tokens"]), MAX_NEW_TOKENS)
EOS = set(GEN.get("eos_token_ids") or [])
#: the step's token ids and attention mask inputs, as the manifest's KV cache names them
TOKENS, MASK = GEN["cache"]["decode"][:2]
#: the cache tensors' element type (the manifest's KV cache)
CACHE_DTYPE = np.dtype(GEN["cache"]["dtype"])

TOKENIZER = Tokenizer.from_file(os.path.join(_HERE, CONFIG["preprocess"]["tokenizer_file"]))


SESSION = device.ort_session(ort, os.path.join(_HERE, CONFIG["model_file"]), THREADS)
INPUT_NAMES = [i.name for i in SESSION.get_inputs()]
OUTPUT_NAMES = [o.name for o in SESSION.get_outputs()]
LOGITS = CONFIG.get("output_name") or "logits"
#: each cache output and the input it is fed back to (present.N.key -> past_key_values.N.key)
FEED_BACK = dict((o, "past_key_values." + o[len("present."):]) for o in OUTPUT_NAMES
                 if o.startswith("present.") and "past_key_values." + o[len("present."):] in INPUT_NAMES)


def _empty_cache():
    """The cache before the prompt: every past input with no positions ([1, kv heads, 0, head size])."""
    out = {}
    for i in SESSION.get_inputs():
        if i.name in FEED_BACK.values():
            shape = [d if isinstance(d, int) and d >= 0 else 0 for d in i.shape]
            shape[0] = 1
            out[i.name] = np.zeros(shape, dtype=CACHE_DTYPE)
    return out


class BadRequest(ValueError):
    """The event is not {"prompt": "...", "max_new_tokens": N} within the model's limits."""


def _request(event):
    """(prompt token ids, max new tokens) of a valid event."""
    if not isinstance(event, dict):
        raise BadRequest('the event must be a JSON object such as {"prompt": "Once upon a time", "max_new_tokens": %d}'
                         % DEFAULT_NEW_TOKENS)
    prompt = event.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise BadRequest("the event has no 'prompt' (a non-empty string to continue)" if prompt is None else
                         "'prompt' must be a non-empty string")
    n = event.get("max_new_tokens")
    n = DEFAULT_NEW_TOKENS if n is None else n
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_NEW_TOKENS:
        raise BadRequest("'max_new_tokens' must be a whole number from 1 to %d, got %s"
                         % (MAX_NEW_TOKENS, json.dumps(n)))
    ids = list(TOKENIZER.encode(prompt).ids)
    if len(ids) + n > CONTEXT:
        fewer = " or ask for at most %d new tokens" % (CONTEXT - len(ids)) if len(ids) < CONTEXT else ""
        raise BadRequest("the prompt is %d tokens: with max_new_tokens %d it passes the model's context of %d tokens; "
                         "shorten the prompt to at most %d tokens%s" % (len(ids), n, CONTEXT, CONTEXT - n, fewer))
    return ids, n


def _step(ids, positions, cache):
    """One call: the new tokens ``ids`` after ``positions`` cached ones; (last position's logits, the next cache)."""
    feeds = {TOKENS: np.asarray([ids], dtype=np.int64), MASK: np.ones((1, positions + len(ids)), dtype=np.int64)}
    feeds = device.decoder_feeds(feeds, INPUT_NAMES)
    feeds.update(cache)
    outs = dict(zip(OUTPUT_NAMES, SESSION.run(OUTPUT_NAMES, dict((k, v) for k, v in feeds.items()
                                                                 if k in INPUT_NAMES))))
    return outs[LOGITS][0, -1], dict((FEED_BACK[o], outs[o]) for o in FEED_BACK)


def generate(prompt_ids, max_new_tokens):
    """Greedy decoding through the KV cache: (new token ids, an end token included; "eos" or "length"; timings)."""
    t0 = time.perf_counter()
    logits, cache = _step(prompt_ids, 0, _empty_cache())
    t_prefill = time.perf_counter() - t0
    made, reason = [], "length"
    t0 = time.perf_counter()
    while True:
        nxt = int(np.argmax(logits))
        made.append(nxt)
        if nxt in EOS:
            reason = "eos"
            break
        if len(made) == max_new_tokens:
            break
        logits, cache = _step([nxt], len(prompt_ids) + len(made) - 1, cache)
    t_decode = time.perf_counter() - t0
    steps = len(made) - 1  # the first new token comes from the prefill
    timings = {"prefill_ms": round(t_prefill * 1e3, 3), "decode_ms": round(t_decode * 1e3, 3),
               "decode_tokens_per_s": round(steps / t_decode, 2) if steps and t_decode > 0 else None}
    return made, reason, timings


def _text(prompt_ids, new_ids):
    """The continuation as text: the whole sequence decoded, less the prompt decoded (as transformers' text-generation
    pipeline returns it), so a word's leading space and a character split across tokens come out right."""
    whole = TOKENIZER.decode(list(prompt_ids) + list(new_ids), skip_special_tokens=True)
    head = TOKENIZER.decode(list(prompt_ids), skip_special_tokens=True)
    return whole[len(head):] if whole.startswith(head) else TOKENIZER.decode(list(new_ids), skip_special_tokens=True)


def _result(event):
    ids, n = _request(event)
    made, reason, timings = generate(ids, n)
    return {"text": _text(ids, made), "finish_reason": reason, "prompt_tokens": len(ids), "new_tokens": len(made),
            "token_ids": made, "timings": timings}


def handler(event, context=None):
    """Entry point (module.function = handler.handler)."""
    http = isinstance(event, dict) and "body" in event and "prompt" not in event
    try:
        if http:
            body = event.get("body") or ""
            if event.get("isBase64Encoded"):
                body = base64.b64decode(body).decode("utf-8")
            try:
                event = json.loads(body)
            except ValueError as e:
                raise BadRequest("the request body is not JSON: %s" % e) from None
        result = _result(event)
    except BadRequest as e:
        if http:
            return {"statusCode": 400, "headers": {"content-type": "application/json"},
                    "body": json.dumps({"error": str(e)})}
        raise
    if http:
        return {"statusCode": 200, "headers": {"content-type": "application/json"}, "body": json.dumps(result)}
    return result
