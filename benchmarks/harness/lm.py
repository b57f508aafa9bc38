"""The generators' anchors, runtimes driven directly with none of edgecompress's code in the loop (llama.cpp itself,
PyTorch with transformers' KV cache, an ONNX Runtime session of a model no artifact describes), behind the runtime
contract's ``generate``, so that a benchmark times every route alike
(:func:`compress.host.measure.measure_generations`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np


class AnchorLoop:
    """The greedy loop of an anchor: its ``prefill`` on the prompt, then its ``step`` on each token made, each token
    the arg-max of the last position's logits; ``generate`` keeps the runtime contract
    (:meth:`compress.runtimes.base.RuntimeBackend.generate`): timed, ``seconds`` has one entry per token (the first:
    the prompt's prefill and its pick) and ``native_seconds`` the part spent inside the runtime's calls."""

    loop: str  #: the loop, named in the results as a runtime adapter's ``generation_loop``

    def prefill(self, feeds):
        raise NotImplementedError

    def step(self, feeds, state):
        raise NotImplementedError

    @property
    def generation_loop(self) -> str:
        return self.loop

    def generate(self, prompt_ids: Sequence[int], new_tokens: int, *, timed: bool = False):
        from compress.tasks.generation import Generated

        perf = time.perf_counter
        ids = np.asarray([list(prompt_ids)], dtype=np.int64)
        seconds: list[float] = []
        native: list[float] = []
        t0 = perf()
        out, state = self.prefill({"input_ids": ids, "attention_mask": np.ones_like(ids)})
        inside = perf() - t0
        tokens = [int(out["logits"][0, -1].argmax())]
        seconds.append(perf() - t0)
        native.append(inside)
        prompt_logits = out["logits"][0]
        total = ids.shape[1]
        while len(tokens) < new_tokens:
            total += 1
            t0 = perf()
            out, state = self.step({"input_ids": np.asarray([[tokens[-1]]], dtype=np.int64),
                                    "attention_mask": np.ones((1, total), dtype=np.int64)}, state)
            inside = perf() - t0
            tokens.append(int(out["logits"][0, -1].argmax()))
            seconds.append(perf() - t0)
            native.append(inside)
        return Generated(prompt_logits, tokens, [], tuple(seconds) if timed else (),
                         tuple(native) if timed else ())


class LlamaCppDirect(AnchorLoop):
    """llama.cpp itself: llama-cpp-python's Llama evaluating tokens, only the last position's logits (its default),
    none of edgecompress's code in the loop: the anchor the LM benchmarks compare every route with."""

    loop = "llama.cpp (llama-cpp-python Llama.eval per token; the benchmarks' anchor loop)"

    def __init__(self, path: Path, threads: int, n_ctx: int = 1024) -> None:
        import llama_cpp

        self.lib = llama_cpp
        self.llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                                   verbose=False)

    def _last(self):
        ptr = self.lib.llama_get_logits_ith(self.llm._ctx.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.llm.n_vocab(),))[None, None].copy()

    def prefill(self, feeds):
        self.llm.reset()
        self.llm.eval([int(t) for t in feeds["input_ids"][0]])
        return {"logits": self._last()}, None

    def step(self, feeds, state):
        self.llm.eval([int(feeds["input_ids"][0, -1])])
        return {"logits": self._last()}, None

    def close(self) -> None:
        self.llm.close()


class TorchDirect(AnchorLoop):
    """PyTorch FP32 through transformers with its KV cache, a forward per token: the other anchor."""

    loop = "PyTorch (transformers' KV cache, a forward per token; the benchmarks' anchor loop)"

    def __init__(self, ckpt: Path, threads: int) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(threads)
        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(str(ckpt), dtype=torch.float32).eval()

    def prefill(self, feeds):
        with self.torch.inference_mode():
            out = self.model(self.torch.from_numpy(feeds["input_ids"]), use_cache=True)
        return {"logits": out.logits.numpy()}, out.past_key_values

    def step(self, feeds, state):
        with self.torch.inference_mode():
            out = self.model(self.torch.from_numpy(feeds["input_ids"]), past_key_values=state, use_cache=True)
        return {"logits": out.logits.numpy()}, out.past_key_values

    def close(self) -> None:
        self.model = None


class OrtDirect(AnchorLoop):
    """An ONNX Runtime session of a decoder with its KV cache as inputs (``past_key_values.*``, empty at the prompt)
    and outputs (``present.*``), run directly: a model no artifact describes (ONNX Runtime GenAI's builder, a
    weight-only rewrite held in memory), ``position_ids`` fed where the graph takes them."""

    loop = "ONNX Runtime (a session run per token, the KV cache fed back; the benchmarks' anchor loop)"

    def __init__(self, session) -> None:
        self.session = session
        self.outputs = [o.name for o in session.get_outputs()]
        self.inputs = {i.name: i.shape for i in session.get_inputs()}
        self.past = [n for n in self.inputs if n.startswith("past_key_values")]

    def _run(self, feeds, state):
        ids, total = feeds["input_ids"], feeds["attention_mask"].shape[1]
        if "position_ids" in self.inputs:
            feeds = {**feeds, "position_ids": np.arange(total - ids.shape[1], total, dtype=np.int64)[None]}
        out = dict(zip(self.outputs, self.session.run(self.outputs, {**feeds, **state}), strict=True))
        return out, {n: out[n.replace("past_key_values", "present")] for n in self.past}

    def prefill(self, feeds):
        empty = {n: np.zeros((1, self.inputs[n][1], 0, self.inputs[n][3]), dtype=np.float32) for n in self.past}
        return self._run(feeds, empty)

    def step(self, feeds, state):
        return self._run(feeds, state)

    def close(self) -> None:
        self.session = None


class StepsLoop:
    """A runtime adapter timed in edgecompress's prefill/step loop (the runtime contract's
    :meth:`~compress.runtimes.base.RuntimeBackend.generate`), not in its runtime's own generation loop where it has
    one (ONNX Runtime GenAI's generator, OpenVINO's stateful request): for the benchmarks that measure that loop."""

    loop = "edgecompress (prefill/step through the runtime contract)"

    def __init__(self, backend) -> None:
        self.backend = backend

    @property
    def generation_loop(self) -> str:
        return self.loop

    def generate(self, prompt_ids: Sequence[int], new_tokens: int, **options):
        from compress.runtimes.base import RuntimeBackend

        return RuntimeBackend.generate(self.backend, prompt_ids, new_tokens, **options)

    def close(self) -> None:
        self.backend.close()
