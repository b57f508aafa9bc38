"""Distilling a causal language model (task text-generation) into a shallower or narrower one.

The transfer text (a ``.txt`` document or ``.jsonl`` of ``{"text": ...}``, :func:`compress.data.text.read_texts`) is
tokenized once and cut into non-overlapping windows of ``--max-length`` tokens (at most the teacher's context; each
window starts with BOS, as the perplexity metric reads text). The loss per window:

* soft targets: KL between the teacher's and the student's next-token distributions at every position, both
  coarsened to the teacher's top ``--top-k`` tokens plus one tail bucket (:func:`~compress.stages.distill.losses.
  topk_divergence`), forward KL(teacher || student) by default or reverse (``--divergence reverse``), at temperature
  T (× T²). The teacher's top-k log-probabilities and tail mass are computed once and cached on disk
  (:func:`compress.stages.teacher_cache.fill_rows`): k × 8 bytes per token instead of the whole vocabulary;
* hard targets: cross entropy on the text's next tokens (``--hard-weight``);
* on-policy (``--on-policy P``, GKD's lambda): that share of the batches is the student's own continuation of each
  window's first half, sampled from the student and scored by the teacher online (the same top-k divergence, on the
  sampled tokens up to the first EOS; no cross entropy, the text being the student's).
* the teacher's own text (``--teacher-samples N``, sequence-level distillation: TRL's ``seq_kd``, the synthetic
  transfer data of Minitron-style recipes): N more windows, each the first eighth of a transfer window continued by
  sampling from the teacher at temperature 1 (:func:`sample_windows`), generated once before training (kept in the
  run directory for ``--resume``) and taught like the text's windows, from the cached targets.

TRL's GKD trainer implements the same objective (its ``beta`` 0 and 1 are the forward and reverse KL here) but is a
``transformers.Trainer`` with its own loop, checkpoints and chat-format datasets, and scores the whole vocabulary
online every step; here the loss runs in the one training loop, the fine-tune's (:class:`compress.stages.training.
TrainLoop`: checkpoints, ``--resume``, the best evaluated weights kept) with the cached top-k targets.

The student is a slice of the teacher's layers (``--layers N`` evenly spaced, always the last; ``--layer-choice
scored`` keeps the layers whose removal alone moves the teacher's next-token distributions most on the transfer
text, Minitron's depth-pruning importance; ``--keep-layers``), a narrower ``--student-config``, or a checkpoint with
the teacher's tokenizer. Eval text (``--eval``) gives perplexity, KL and top-1 agreement with the teacher
(:class:`compress.tasks.generation.GenerationStream`) before and after, and picks the best weights by agreement.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from compress.errors import ConfigError
from compress.stages.distill.config import (
    DistillConfig,
    DistillResult,
    Divergence,
    LayerChoice,
    Metric,
)
from compress.stages.training import Interrupted

__all__ = ["LM_LOSS", "distill_causal_lm", "evaluate_lm", "lm_defaults", "sample_windows", "score_layers"]

log = logging.getLogger("compress.stages.distill")

LM_CONFIG = "distill_config.json"  # beside the loop's run_config.json: the settings a resumed run must share
SAMPLES = "teacher_samples.npy"  # the --teacher-samples windows, kept for --resume


#: a causal LM's loss where the settings leave it: KL alone at T = 1 (Minitron's logit distillation); on
#: stories260K (5 -> 3 layers) it gave a higher top-1 agreement than the encoders' T = 2 with 0.3 cross entropy
LM_LOSS = {"temperature": 1.0, "soft_weight": 1.0, "hard_weight": 0.0}


def lm_defaults(config: DistillConfig) -> DistillConfig:
    """``config`` with a causal LM's loss defaults (:data:`LM_LOSS`) where it does not set them."""
    given = set(config.given())
    update = {k: v for k, v in LM_LOSS.items() if f"loss.{k}" not in given}
    return config.model_copy(update={"loss": config.loss.model_copy(update=update)}) if update else config


def _refuse(config: DistillConfig) -> None:
    loss, aug, tr = config.loss, config.augmentation, config.training
    ask = [(aug.copies or aug.join, "--augment/--augment-join make new sentences for classifiers", "drop them"),
           (loss.hidden_weight or loss.attention_weight or loss.value_relation_weight,
            "a causal LM is distilled on its next-token distributions only",
            "leave --hidden-weight, --attention-weight and --value-relation-weight at 0"),
           (config.evaluation.metric in (Metric.accuracy, Metric.cosine),
            f"--metric {config.evaluation.metric}: a causal LM student is judged by top-1 agreement with the teacher",
            "use --metric agreement (or auto)"),
           (config.text_column or config.label_column, "--text-column/--label-column: a causal LM reads plain text "
            "(.txt, or .jsonl with a \"text\" field)", "drop them"),
           (loss.on_policy_tokens is not None and not loss.on_policy,
            f"--on-policy-tokens {loss.on_policy_tokens} sizes the student's own samples, and --on-policy is 0: none "
            "are drawn (it would be ignored)", "add --on-policy (e.g. 0.5), or drop --on-policy-tokens"),
           (tr.average, "--average is not available for a causal LM", "drop it"),
           (tr.grad_accum > 1, "--grad-accum is not available for a causal LM", "raise --batch-size instead"),
           (tr.schedule.value != "linear", "a causal LM trains with a linear schedule", "drop --schedule"),
           (tr.mixed_precision.value not in ("auto", "no"), "a causal LM trains in FP32",
            "drop --mixed-precision")]
    for bad, what, hint in ask:
        if bad:
            raise ConfigError(what, hint=hint)


def _windows(tokenizer, path, window: int, context: int, limit: int | None, seed: int | None) -> np.ndarray:
    """The windows of the text at ``path``: all (or ``limit`` of them: chosen by ``seed``, else the first)."""
    from compress.data.text import read_texts, token_windows

    try:
        ids = token_windows(tokenizer, read_texts(path), window, context=context)
    except ConfigError as e:
        if "shorter than one window" in e.message:
            raise ConfigError(f"{path}: {e.message.split(':')[0]}", hint=f"{e.hint}; give more text or a smaller "
                              "--max-length") from None
        raise
    if limit is not None and limit < len(ids):
        ids = ids[np.sort(np.random.default_rng(seed).choice(len(ids), limit, replace=False))] if seed is not None \
            else ids[:limit]
    return ids


class Windows:
    """Token windows as the training loop's data: ``collate(idx)`` gives the ids, and the teacher's cached
    targets for those rows when there is a cache."""

    def __init__(self, ids: np.ndarray) -> None:
        self.ids = ids
        self.lengths = np.full(len(ids), ids.shape[1])
        self.cache = None

    def __len__(self) -> int:
        return len(self.ids)

    def collate(self, idx: list[int]) -> dict[str, Any]:
        import torch

        ids = torch.from_numpy(self.ids[idx])
        out = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "rows": torch.tensor(idx)}
        if self.cache is not None and self.cache.labelled[idx].all():  # (rows drawn for on-policy need none)
            out.update({k: torch.from_numpy(v) for k, v in self.cache.rows(idx).items()})
        return out


def _fingerprint(ids: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(ids).tobytes() + str(ids.shape).encode()).hexdigest()


def score_layers(model, windows: np.ndarray, *, batch_size: int = 8) -> list[float]:
    """Each layer's importance: the mean KL(full model || model without that layer) of the next-token distributions
    over ``windows`` (Minitron's depth-pruning score; one forward pass per layer and batch)."""
    import torch

    from compress.stages.common import layer_list

    name, layers = layer_list(model)
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    attr = name.rpartition(".")[2]
    n = len(layers)

    def logp(ids):
        return torch.log_softmax(model(input_ids=ids, use_cache=False).logits.float(), -1)

    scores = [0.0] * n
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(windows), batch_size):
                ids = torch.from_numpy(windows[start:start + batch_size])
                full = logp(ids)
                for i in range(n):
                    setattr(parent, attr, torch.nn.ModuleList([m for j, m in enumerate(layers) if j != i]))
                    model.config.num_hidden_layers = n - 1
                    try:
                        kl = (full.exp() * (full - logp(ids))).sum(-1).mean()
                    finally:
                        setattr(parent, attr, layers)
                        model.config.num_hidden_layers = n
                    scores[i] += float(kl) * len(ids) / len(windows)
    finally:
        setattr(parent, attr, layers)
        model.config.num_hidden_layers = n
    return scores


def _student(teacher, config: DistillConfig, windows: np.ndarray, choose_student):
    """The student, its description, and the refusals of one that cannot be distilled from a causal LM's logits."""
    from compress.stages.distill.student import build_student

    if config.student.layer_choice is LayerChoice.scored:
        n_teacher = teacher.model.config.num_hidden_layers
        if config.student.layers >= n_teacher:
            raise ConfigError(f"--layers {config.student.layers}: the student would be as deep as the teacher "
                              f"({n_teacher} layers) or deeper", hint=f"pick at most {n_teacher - 1} layers")
        sample = windows[np.random.default_rng(config.seed).permutation(len(windows))[:32]]
        scores = score_layers(teacher.model, sample)
        keep = sorted(sorted(range(len(scores)), key=lambda i: -scores[i])[: config.student.layers])
        picked = config.model_copy(update={"student": config.student.model_copy(
            update={"layers": None, "keep_layers": keep})})
        student, desc = build_student(teacher.model, picked)
        desc.update(layer_choice="scored", layer_scores=[round(s, 6) for s in scores])
        own_tokenizer = None
    else:
        student, desc, _, own_tokenizer = choose_student(teacher, config)
        if "kept_teacher_layers" in desc:
            desc["layer_choice"] = "given" if config.student.keep_layers else "evenly"
    t_vocab = teacher.model.config.vocab_size
    if own_tokenizer is not None or student.config.vocab_size != t_vocab:
        raise ConfigError(f"the student's tokenizer or vocabulary ({student.config.vocab_size:,} tokens) is not the "
                          f"teacher's ({t_vocab:,}): next-token distributions are compared token by token",
                          hint="pick a student that shares the teacher's tokenizer, or build one with --layers")
    if not type(student).__name__.endswith(("ForCausalLM", "LMHeadModel")):
        raise ConfigError(f"the student is a {type(student).__name__}, not a causal LM",
                          hint="give a …ForCausalLM checkpoint with the teacher's tokenizer, or --layers N")
    return student, desc


def _eos_ids(model) -> list[int]:
    """The model's end-of-text token ids (its config's ``eos_token_id``: one, several or none)."""
    eos = model.config.eos_token_id
    return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)


def sample_windows(model, windows: np.ndarray, n: int, seed: int, device, progress=None,
                   batch_size: int = 32) -> np.ndarray:
    """``n`` windows of ``windows``' width written by the causal LM ``model``: the first eighth of each window in
    turn (BOS first) continued by sampling at temperature 1 (no top-k or top-p cut) to the full width, end-of-text
    suppressed (a window runs on through the text as the transfer windows do). The same model, windows, ``n`` and
    ``seed`` give the same samples; the global random state is left as it was."""
    import torch

    from compress.progress import start_phase

    width = windows.shape[1]
    prompt = max(1, width // 8)
    new = width - prompt
    eos = _eos_ids(model)
    advance = start_phase(progress, "samples", n)
    out = np.empty((n, width), dtype=windows.dtype)
    was_training = model.training
    model.eval()
    with torch.random.fork_rng(devices=[device] if torch.device(device).type == "cuda" else []), \
            torch.inference_mode():
        torch.manual_seed(seed)
        for start in range(0, n, batch_size):
            rows = np.arange(start, min(n, start + batch_size)) % len(windows)
            ids = torch.from_numpy(windows[rows, :prompt]).to(device)
            seq = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=0,
                                 top_p=1.0, temperature=1.0, max_new_tokens=new, min_new_tokens=new,
                                 pad_token_id=eos[0] if eos else 0)
            out[start:start + len(rows)] = seq.cpu().numpy()
            advance(len(rows))
    model.train(was_training)
    return out


def _teacher_samples(teacher, ids: np.ndarray, config: DistillConfig, run: Path, resume: bool,
                     progress) -> tuple[np.ndarray | None, float | None]:
    """The ``--teacher-samples`` windows (None when not asked for) and the seconds writing them took (None when
    read back): made by the main process, or read from the run being resumed (whose settings, teacher and text
    :func:`_check_resume` found unchanged), and sent to the others of ``accelerate launch``."""
    import time

    if not config.augmentation.teacher_samples:
        return None, None
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    state, got, seconds = PartialState(), [None], None
    if state.is_main_process:
        if resume and (run / SAMPLES).is_file():
            got[0] = np.load(run / SAMPLES)
        else:
            t0 = time.perf_counter()
            teacher.model.to(state.device)
            got[0] = sample_windows(teacher.model, ids, config.augmentation.teacher_samples, config.seed,
                                    state.device, progress)
            seconds = round(time.perf_counter() - t0, 1)
    if state.num_processes > 1:
        broadcast_object_list(got)
    return got[0], seconds


def _keep_samples(run: Path, samples: np.ndarray) -> None:
    """Write the teacher's samples into the run directory (atomically) for ``--resume``."""
    import os

    tmp = run / f".{SAMPLES}"
    with open(tmp, "wb") as f:
        np.save(f, samples)
    os.replace(tmp, run / SAMPLES)


def _check_resume(run: Path, record: dict[str, Any], resume: bool) -> None:
    from compress.stages.distill.run import _diff

    if not resume or not (run / LM_CONFIG).is_file():
        return
    old = json.loads((run / LM_CONFIG).read_text())
    diffs = _diff(old.get("config", {}), record["config"])
    diffs += [f"{what} changed" for key, what in (("teacher", "teacher"), ("train", "training text"),
                                                   ("eval", "eval text")) if old.get(key) != record[key]]
    if diffs:
        raise ConfigError(f"--resume: the interrupted run in {run} used different settings ({'; '.join(diffs)})",
                          hint="resume with the original settings, or start over with --force")


def _fill_cache(loop, teacher, data: Windows, config: DistillConfig, cache_dir: Path, key: dict[str, Any],
                progress) -> tuple[int, float]:
    """The teacher's top-k targets for the windows the run draws (main process; the others wait). Returns the
    windows labelled now and the seconds it took."""
    import time

    import torch

    from compress.interrupt import StopFlag
    from compress.stages import teacher_cache as tcache
    from compress.stages.distill.losses import teacher_topk
    from compress.stages.transfer import length_grouped_order

    n, window, k = len(data), data.ids.shape[1], min(config.loss.top_k, teacher.model.config.vocab_size)
    shapes = {"topk_index": ((n, window, k), np.int32), "topk_logp": ((n, window, k), np.float32),
              "tail_logp": ((n, window), np.float32)}
    bs = config.training.batch_size
    draws = loop.total * bs
    rows = None if draws >= n else np.array(length_grouped_order(data.lengths, bs, config.seed)[:draws])
    t0, labelled, complete = time.perf_counter(), 0, True
    tcache.check_directory(cache_dir)
    loop.accelerator.wait_for_everyone()
    if loop.is_main:
        device = loop.device

        def forward(idx: list[int]) -> dict[str, np.ndarray]:
            with torch.inference_mode():
                ids = torch.from_numpy(data.ids[idx]).to(device)
                logits = teacher.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits
                return {name: v.cpu().numpy() for name, v in
                        teacher_topk(logits, k, config.loss.temperature).items()}

        with StopFlag() as flag:
            labelled, _, complete = tcache.fill_rows(cache_dir, key, shapes, rows, forward, max(8, bs), progress,
                                                     lambda: flag.requested)
    loop.accelerator.wait_for_everyone()
    if not complete:
        raise Interrupted(f"interrupted while computing the teacher's outputs; the windows done so far are kept in "
                          f"{cache_dir}", hint="run the same command with --resume to continue")
    data.cache = tcache.RowCache(cache_dir)
    return labelled, time.perf_counter() - t0


def _loss(teacher, config: DistillConfig, window: int, context: int, after_step: Callable[[], None] | None = None):
    """The batch loss: the soft-target divergence (cached targets, or the teacher online on the student's samples)
    and cross entropy on the text. ``after_step()`` runs first (the previous optimizer step's hook)."""
    import torch
    import torch.nn.functional as F

    from compress.stages.distill.losses import teacher_topk, topk_divergence

    loss_cfg = config.loss
    temp, reverse = loss_cfg.temperature, loss_cfg.divergence is Divergence.reverse
    k = min(loss_cfg.top_k, teacher.model.config.vocab_size)
    prompt = max(1, window // 2)
    new = loss_cfg.on_policy_tokens or window - prompt
    if loss_cfg.on_policy and prompt + new > context:
        raise ConfigError(f"--on-policy-tokens {new} after a prompt of {prompt} tokens is longer than the teacher's "
                          f"context ({context})", hint=f"give --on-policy-tokens {context - prompt} or less")
    eos_ids = _eos_ids(teacher.model)

    def on_policy(rows) -> bool:
        return loss_cfg.on_policy > 0 and random.Random(f"{config.seed}:{rows}").random() < loss_cfg.on_policy

    def sampled(model, ids):
        """The student's continuations of each window's first half, the positions that predict the sampled tokens
        (up to and including the first EOS), and the teacher's targets on the whole sequence."""
        gen = getattr(model, "module", model)
        was_training = gen.training
        gen.eval()
        with torch.no_grad():
            seq = gen.generate(input_ids=ids[:, :prompt], attention_mask=torch.ones_like(ids[:, :prompt]),
                               do_sample=True, top_k=0, top_p=1.0, temperature=1.0, max_new_tokens=new,
                               pad_token_id=eos_ids[0] if eos_ids else 0)
            target = teacher_topk(teacher.model(input_ids=seq, use_cache=False).logits, k, temp)
        gen.train(was_training)
        mask = torch.zeros(seq.shape, dtype=torch.bool, device=seq.device)
        sampled_ids = seq[:, prompt:]
        stops = torch.isin(sampled_ids, torch.tensor(eos_ids, dtype=seq.dtype, device=seq.device))
        past_eos = (stops.cumsum(1) - stops.int()) > 0
        mask[:, prompt - 1:-1] = ~past_eos  # the logit at position p predicts the token at p + 1
        return seq, mask, target

    def loss(model, batch: dict[str, Any]):
        if after_step is not None:
            after_step()  # the hook of the optimizer step before this batch (e.g. sparsity masks kept applied)
        rows = batch.pop("rows").tolist()
        target = {key: batch.pop(key) for key in ("topk_index", "topk_logp", "tail_logp") if key in batch}
        ids = batch["input_ids"]
        if on_policy(rows):
            seq, mask, target = sampled(model, ids)
            logits = model(input_ids=seq, attention_mask=torch.ones_like(seq)).logits
            return loss_cfg.soft_weight * topk_divergence(logits, target, mask, temp, reverse)
        logits = model(input_ids=ids, attention_mask=batch["attention_mask"]).logits
        total = logits.sum() * 0.0
        if loss_cfg.soft_weight:
            total = total + loss_cfg.soft_weight * topk_divergence(logits, target, torch.ones_like(ids), temp,
                                                                   reverse)
        if loss_cfg.hard_weight:
            total = total + loss_cfg.hard_weight * F.cross_entropy(logits[:, :-1].flatten(0, 1).float(),
                                                                   ids[:, 1:].flatten())
        return total

    return loss


def evaluate_lm(model, teacher_model, windows: np.ndarray, device, batch_size: int = 8) -> dict[str, Any]:
    """Perplexity, KL and top-1 agreement against the teacher over ``windows`` (the second half of each scored,
    :class:`~compress.tasks.generation.GenerationStream`)."""
    import torch

    from compress.tasks.generation import GenerationStream

    stream = GenerationStream()
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(windows), batch_size):
            ids = torch.from_numpy(windows[start:start + batch_size]).to(device)
            feed = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "use_cache": False}
            stream.update(model(**feed).logits.float().cpu().numpy(), ids.cpu().numpy(),
                          teacher_model(**feed).logits.float().cpu().numpy())
    model.train(was_training)
    return stream.result()


def distill_causal_lm(teacher, train, output, config: DistillConfig, *, eval_data, run: Path, teacher_cache,
                      resume: bool, force: bool, progress, choose_student, write,
                      on_step: Callable[[Any, int, int], None] | None = None) -> DistillResult:
    """Distil the causal LM ``teacher`` on the text ``train`` into the student ``choose_student(teacher, config)``
    gives (or the scored layers of the teacher); ``write(model, teacher, output, metrics)`` writes its artifact.
    ``on_step(student, step, total)`` runs after every optimizer step (before the next batch's forward pass, and on
    the weights written), under ``torch.no_grad``."""
    import torch

    from compress.stages.distill.run import loop_settings
    from compress.stages.distill.student import count_parameters
    from compress.stages.training import refuse_unfinished, run_loop, settings_record
    from compress.teachers.lm import CausalLM

    _refuse(config)
    config = lm_defaults(config)
    lm = CausalLM.from_teacher(teacher)
    window = min(config.max_length or lm.context, lm.context)
    ids = _windows(lm.tokenizer, train, window, lm.context, config.max_train_rows, config.seed)
    eval_ids = None
    if eval_data is not None:
        eval_ids = _windows(lm.tokenizer, eval_data, window, lm.context, config.evaluation.samples, None)
    student, desc = _student(teacher, config, ids, choose_student)
    record = {"config": config.training_fields(), "teacher": teacher.sha256, "train": _fingerprint(ids),
              "eval": _fingerprint(eval_ids) if eval_ids is not None else None}
    _check_resume(run, record, resume)
    refuse_unfinished(run, resume, force)  # before the teacher writes its samples, not after
    samples, sample_seconds = _teacher_samples(teacher, ids, config, run, resume, progress)
    train_ids = ids if samples is None else np.concatenate([ids, samples])

    tc = config.training
    settings = loop_settings(config)
    data = Windows(train_ids)
    evaluated: dict[str, Any] = {}

    def agreement(model) -> float:
        evaluated.update(evaluate_lm(model, teacher.model, eval_ids, loop.device))
        return evaluated["top1_agreement"]

    def after_step() -> None:
        if loop.state["step"]:
            with torch.no_grad():
                on_step(student, loop.state["step"], loop.total)

    loop = run_loop(student, [p for p in student.parameters() if p.requires_grad], data, settings, run, progress,
                    lr=tc.lr, loss=_loss(teacher, config, window, lm.context, after_step if on_step else None),
                    evaluate=agreement if eval_ids is not None else None, metric_name="agreement",
                    run_config={**settings_record(settings), "lr": tc.lr, "max_length": window})
    teacher.model.to(loop.device).eval()
    before = evaluate_lm(student, teacher.model, eval_ids, loop.device) if eval_ids is not None else None
    loop.start(resume, force)
    if loop.is_main:
        (run / LM_CONFIG).write_text(json.dumps(record, indent=1) + "\n")
        if samples is not None:
            _keep_samples(run, samples)
    labelled, cache_seconds = 0, 0.0
    if config.loss.soft_weight and config.loss.on_policy < 1:
        windows = record["train"] if samples is None else _fingerprint(train_ids)
        key = {"teacher": teacher.sha256, "windows": windows, "top_k": config.loss.top_k,
               "temperature": config.loss.temperature, "kind": "causal-lm-top-k"}
        cache_dir = Path(teacher_cache) if teacher_cache else run / "teacher-cache"
        try:
            labelled, cache_seconds = _fill_cache(loop, teacher, data, config, cache_dir, key, progress)
        except Interrupted:
            loop.store.save(loop)  # (step 0) so that --resume finds the run and continues the teacher's outputs
            raise
    loop.train()
    final = loop.finish()
    if on_step is not None:
        with torch.no_grad():
            on_step(final, loop.total, loop.total)
    if not loop.is_main:
        art, metrics = loop.follow(output)
        return DistillResult(art, metrics)
    metrics: dict[str, Any] = {
        **loop.record(), "teacher_parameters": count_parameters(teacher.model),
        "student_parameters": count_parameters(final), "student": desc, "window": window,
        "transfer_windows": len(ids), "transfer_tokens": int(ids.size), "divergence": config.loss.divergence.value,
        "top_k": config.loss.top_k, "on_policy": config.loss.on_policy, "teacher_samples": len(train_ids) - len(ids),
        "teacher_sample_seconds": sample_seconds, "teacher_labelled_rows": labelled,
        "teacher_cache_seconds": round(cache_seconds, 1),
        "teacher_cache_bytes": data.cache.nbytes if data.cache is not None else 0,
        "data": {"train": str(Path(train).resolve()), "eval": str(Path(eval_data).resolve()) if eval_data else None}}
    if eval_ids is not None:
        after = evaluate_lm(final.to(loop.device), teacher.model, eval_ids, loop.device)
        final.cpu()
        metrics.update(eval_windows=len(eval_ids), before=before, after=after)
    teacher.model.to("cpu")
    art = write(final, teacher, output, metrics)
    loop.written()
    return DistillResult(art, metrics)
