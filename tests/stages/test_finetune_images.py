"""``edgecompress finetune`` on image bases (tiny random Hugging Face MobileNetV2 and ViT, a timm MobileNetV3, tiny
``torch.export`` programs; the images are generated test material): a new head for the data's classes, frozen stems and
blocks that stay as pretrained (BatchNorm statistics included), LoRA merged, timm checkpoints written in timm's format,
programs with their head cut off and written back as programs, forgetting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from compress.stages.finetune import finetune
from compress.stages.finetune.config import FinetuneConfig
from tests.builders.cli import main_error
from tests.builders.images import LABELS, write_hf_image_teachers, write_image_set, write_program_teacher

pytestmark = pytest.mark.slow

QUICK = dict(max_steps=3, batch_size=8, eval_every=3)


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("image-bases")
    write_image_set(root)
    out = write_hf_image_teachers(root / "hf")
    write_program_teacher(root / "program")
    return {**out, "program": root / "program", "images": root / "set", "npz": root / "set.npz"}


def _weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_an_image_base_gets_a_head_for_the_datas_classes_with_its_own_preprocessing(bases, tmp_path):
    from compress.teachers.load import load_teacher

    r = finetune(bases["cnn"], bases["images"], tmp_path / "t", FinetuneConfig.from_flat(**QUICK), eval_data=bases["npz"])
    m = r.artifact.manifest
    base = load_teacher(bases["cnn"])
    assert (m.task, m.labels, [s.stage for s in m.steps]) == ("image-classification", LABELS, ["finetune"])
    assert m.source.sha256 == base.sha256 and m.preprocess == base.info.preprocess
    met = r.metrics
    assert met["mode"] == "full" and met["lr"] == 5e-4 and met["eval_rows"] == 24 and 0 <= met["eval_metric"] <= 1
    tuned = load_teacher(r.artifact.path)  # a plain checkpoint every later step takes as its teacher
    assert type(tuned.model).__name__ == "MobileNetV2ForImageClassification" and tuned.info.labels == LABELS


def test_freeze_all_trains_only_the_head_and_keeps_the_bases_batchnorm_statistics(bases, tmp_path):
    r = finetune(bases["cnn"], bases["images"], tmp_path / "t", FinetuneConfig.from_flat(freeze="all", lr=1e-2, **QUICK),
                 retain_data=bases["images"])
    base, tuned = _weights(bases["cnn"]), _weights(r.artifact.path)
    changed = {k for k in base if k in tuned and base[k].shape == tuned[k].shape
               and not bool((base[k] == tuned[k]).all())}
    assert changed == {"classifier.weight", "classifier.bias"}  # BatchNorm statistics too: frozen layers ran in eval
    f = r.metrics["forgetting"]
    assert f["embedding_cosine"] == pytest.approx(1.0, abs=1e-5) and f["neighbour_agreement"] == 1.0
    assert f["head_agreement"] == 1.0  # the base's own head on the untouched backbone answers as the base


def test_freeze_n_keeps_the_stem_and_the_first_n_blocks(bases, tmp_path):
    r = finetune(bases["cnn"], bases["images"], tmp_path / "t", FinetuneConfig.from_flat(freeze=2, lr=1e-2, **QUICK))
    base, tuned = _weights(bases["cnn"]), _weights(r.artifact.path)
    for k in base:
        if k.endswith(".weight") and "mobilenet_v2." in k and "num_batches" not in k:
            unchanged = bool((base[k] == tuned[k]).all())
            frozen = "conv_stem" in k or ".layer.0." in k or ".layer.1." in k
            assert unchanged == frozen, k
    assert r.metrics["frozen_layers"] == 2 and r.metrics["trainable_share"] < 1


def test_lora_on_a_vit_is_merged_into_a_plain_checkpoint(bases, tmp_path):
    from compress.teachers.load import load_teacher

    r = finetune(bases["vit"], bases["images"], tmp_path / "t", FinetuneConfig.from_flat(lora_rank=4, **QUICK))
    assert r.metrics["mode"] == "lora" and r.metrics["trainable_share"] < 0.5
    names = set(_weights(r.artifact.path))
    assert not any("lora" in n for n in names) and "classifier.weight" in names
    assert type(load_teacher(r.artifact.path).model).__name__ == "ViTForImageClassification"


def test_a_timm_base_is_written_back_in_timms_format_with_the_new_classes(tmp_path, bases):
    pytest.importorskip("timm")
    from compress.teachers.load import load_teacher
    from tests.builders.images import save_timm

    base = save_timm(tmp_path / "base", "resnet10t")
    r = finetune(base, bases["images"], tmp_path / "t", FinetuneConfig.from_flat(freeze=1, **QUICK), retain_data=bases["npz"])
    tuned = load_teacher(r.artifact.path)
    assert tuned.info.kind == "timm" and tuned.info.labels == LABELS
    assert tuned.info.preprocess == load_teacher(base).info.preprocess
    assert 0 <= r.metrics["forgetting"]["head_agreement"] <= 1


def test_bad_image_fine_tunes_are_one_line_errors(bases, tmp_path, capsys):
    line = main_error(capsys, "finetune", bases["cnn"], "--train", bases["images"], "--task", "text-classification",
                      "--out", tmp_path / "b")
    assert "an image base" in line
    line = main_error(capsys, "finetune", bases["cnn"], "--train", bases["images"], "--freeze", "99",
                      "--out", tmp_path / "c")
    assert "--freeze 99" in line and "16 blocks" in line
    one = tmp_path / "one.npz"
    np.savez(one, images=np.zeros((4, 8, 8), np.uint8), labels=np.zeros(4, np.int64))
    assert "one label" in main_error(capsys, "finetune", bases["cnn"], "--train", one, "--out", tmp_path / "d")
    assert not any((tmp_path / n).exists() for n in "bcd")


def _regression_set(bases, tmp_path) -> tuple[Path, Path]:
    """The test images with a number each (test material: 0.5 × the class signal's index + 0.25): a path,label table
    of the PNGs and an .npz of the same images."""
    rows = ["path,label"] + [f"{bases['images'] / name / f'{k}.png'},{c * 0.5 + 0.25}"
                             for c, name in enumerate(LABELS) for k in range(4)]
    (tmp_path / "reg.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    with np.load(bases["npz"]) as d:
        np.savez(tmp_path / "reg.npz", images=d["images"], labels=d["labels"] * 0.5 + 0.25)
    return tmp_path / "reg.csv", tmp_path / "reg.npz"


def test_an_image_regressor_learns_from_a_path_table_and_exports(bases, tmp_path):
    """A Hugging Face ViT gets a one-output regression head: trained on a path,label table of numbers, evaluated on an
    .npz (MAE, the lowest kept); written as a regressor that loads as a regression teacher and exports."""
    from compress.stages.export import export
    from compress.teachers.load import load_teacher

    table, npz = _regression_set(bases, tmp_path)
    r = finetune(bases["vit"], table, tmp_path / "t", FinetuneConfig.from_flat(task="regression", max_steps=6, batch_size=8,
                 lr=1e-2, eval_every=3), eval_data=npz)
    m, met = r.artifact.manifest, r.metrics
    assert (m.task, m.labels, m.outputs[0].shape) == ("regression", None, ["batch_size", 1])
    assert m.preprocess == load_teacher(bases["vit"]).info.preprocess
    assert met["metric"] == "mae" and met["eval_metric"] == min(h["metric"] for h in met["history"])
    assert met["eval_metric"] < 0.6 * 0.75  # the mean predictor's MAE on these targets is 0.75
    tuned = load_teacher(r.artifact.path)
    assert tuned.task == "regression" and tuned.model.config.problem_type == "regression"
    onnx = export(r.artifact.path, tmp_path / "onnx")  # the chain takes it as it takes any image teacher
    assert onnx.manifest.task == "regression" and onnx.manifest.labels is None


def test_a_timm_regressor_says_so_in_its_config(bases, tmp_path):
    import json

    timm = pytest.importorskip("timm")
    import torch
    from timm.models import save_for_hf

    from compress.teachers.load import load_teacher

    args = dict(img_size=16, patch_size=4, depth=1, embed_dim=32, num_heads=2)  # a tiny random timm ViT
    torch.manual_seed(0)
    base = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, **args,
                             pretrained_cfg_overlay={"input_size": (3, 16, 16), "crop_pct": 1.0})
    save_for_hf(base.eval(), str(tmp_path / "base"), model_config={"label_names": ["a", "b", "c"]}, model_args=args,
                safe_serialization=True)
    _, npz = _regression_set(bases, tmp_path)
    r = finetune(tmp_path / "base", npz, tmp_path / "t", FinetuneConfig.from_flat(task="regression", max_steps=2, batch_size=8))
    config = json.loads((r.artifact.path / "config.json").read_text(encoding="utf-8"))
    assert (config["problem_type"], config["num_classes"]) == ("regression", 1)
    tuned = load_teacher(r.artifact.path)
    assert (tuned.task, tuned.info.kind, r.artifact.manifest.labels) == ("regression", "timm", None)


def test_bad_image_regressions_are_one_line_errors(bases, tmp_path, capsys):
    line = main_error(capsys, "finetune", bases["cnn"], "--task", "regression", "--train", bases["images"],
                      "--out", tmp_path / "a")
    assert "carries class names, not numbers" in line and ".npz" in line
    table, _ = _regression_set(bases, tmp_path)
    table.write_text(table.read_text(encoding="utf-8").replace(",0.25", ",low", 1), encoding="utf-8")
    line = main_error(capsys, "finetune", bases["cnn"], "--task", "regression", "--train", table,
                      "--out", tmp_path / "c")
    assert "row 1: target 'low' is not a number" in line
    assert not any((tmp_path / n).exists() for n in "ac")


def test_cli_fine_tunes_an_image_base(bases, tmp_path):
    from click.testing import CliRunner

    from compress.cli import cli

    res = CliRunner().invoke(cli, ["finetune", str(bases["cnn"]), "--train", str(bases["images"]), "--eval",
                                   str(bases["npz"]), "--freeze", "all", "--max-steps", "2", "--batch-size", "8",
                                   "--out", str(tmp_path / "t")], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "frozen" in res.output and "eval accuracy" in res.output


def test_the_best_checkpoint_keeps_its_batchnorm_statistics(tmp_path):
    """The kept weights are the model that scored best: a checkpoint restores its BatchNorm statistics with its
    parameters (they move in training; restoring the parameters alone gives another model)."""
    import torch

    from compress.stages.finetune.common import train_loop
    from compress.stages.finetune.images import ImageBatches

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    loop = train_loop(model, list(model.parameters()), ImageBatches(torch.zeros(4, 3, 8, 8), torch.zeros(4), 0, 0),
                      FinetuneConfig.from_flat(max_steps=1), tmp_path / "run", None, lr=1e-3, loss=lambda m, b: None,
                      evaluate=None, metric_name="accuracy")
    saved = loop.trainable_state()
    with torch.no_grad():
        model[1].running_mean.add_(1.0)
        model[0].weight.add_(1.0)
    loop.load_trainable(saved)
    # the loop moved the model to its device (CUDA where there is one); the saved state is on the CPU
    assert torch.equal(model[1].running_mean.cpu(), torch.zeros(4)) and torch.equal(model[0].weight.cpu(), saved["0.weight"])


def test_augmentation_follows_the_batch_so_a_resumed_run_draws_the_same_shifts():
    import torch

    from compress.stages.finetune.images import ImageBatches

    x = torch.arange(6 * 3 * 8 * 8, dtype=torch.float32).reshape(6, 3, 8, 8)
    first, resumed = ImageBatches(x, torch.zeros(6), 0.25, 0), ImageBatches(x, torch.zeros(6), 0.25, 0)
    first.collate([0, 1])  # a batch the resumed run does not draw again
    a, b = first.collate([2, 3])["pixel_values"], resumed.collate([2, 3])["pixel_values"]
    assert torch.equal(a, b) and not torch.equal(a, x[[2, 3]])  # shifted, and the same


def _program_weights(path: Path) -> dict:
    from compress.teachers.programs import load_program

    return {k: v.detach() for k, v in load_program(path / "model.pt2").state_dict.items()}


def test_a_program_base_gets_a_new_head_trains_through_its_graph_and_is_written_as_a_program(bases, tmp_path):
    """The program's head is cut off its graph, a new one for the data's classes trains with the backbone (gradients
    through the graph: the convolution moves, the BatchNorm statistics stay as exported); the result is a model.pt2
    with a model.yaml that loads as a program teacher reading images as the base does, and exports to ONNX."""
    import torch

    from compress.stages.export import export
    from compress.teachers.load import load_teacher

    losses: list[float] = []
    r = finetune(bases["program"], bases["npz"], tmp_path / "t", FinetuneConfig.from_flat(
        max_steps=8, batch_size=24, lr=5e-2, shift=0, eval_every=4), eval_data=bases["npz"], retain_data=bases["npz"],
        progress=lambda e: losses.append(e["loss"]) if e.get("phase") == "train" else None)
    m, met, base = r.artifact.manifest, r.metrics, load_teacher(bases["program"])
    labels = [str(i) for i in range(len(LABELS))]  # the .npz's class ids
    assert (m.task, m.labels, m.model_file, m.outputs[0].shape) == ("image-classification", labels, "model.pt2",
                                                                     ["batch_size", len(LABELS)])
    assert m.source.sha256 == base.sha256 and m.preprocess == base.info.preprocess
    assert losses[-1] < 0.9 * losses[0] and met["mode"] == "full" and met["trainable_share"] == 1
    before, after = _program_weights(bases["program"]), _program_weights(r.artifact.path)
    assert not torch.equal(before["conv.weight"], after["backbone.conv.weight"])
    assert torch.equal(before["bn.running_var"], after["backbone.bn.running_var"])
    assert 0 <= met["forgetting"]["head_agreement"] <= 1 and met["forgetting"]["embedding_cosine"] < 1
    tuned = load_teacher(r.artifact.path)
    assert (tuned.info.kind, tuned.info.labels, tuned.info.preprocess) == ("program", labels, base.info.preprocess)
    x = tuned.example_inputs()["pixel_values"]
    with torch.inference_mode():  # its batch is dynamic, as the base's
        assert torch.allclose(tuned.model(x[:1]), tuned.model(x)[:1], atol=1e-5)
    onnx = export(r.artifact.path, tmp_path / "onnx")
    assert onnx.manifest.labels == labels and onnx.manifest.steps[0].stage == "finetune"


def test_a_linear_probe_on_a_program_trains_only_the_new_head(bases, tmp_path):
    r = finetune(bases["program"], bases["npz"], tmp_path / "t", FinetuneConfig.from_flat(freeze="all", max_steps=2,
                 batch_size=24, lr=1e-2), retain_data=bases["npz"])
    import torch

    before, after = _program_weights(bases["program"]), _program_weights(r.artifact.path)
    assert {k for k in after if not k.startswith("backbone.")} == {"head.weight", "head.bias"}
    kept = {f"backbone.{k}" for k in before if not k.startswith("fc.")}  # the base's head is cut off
    assert kept == {k for k in after if k.startswith("backbone.")}
    assert all(torch.equal(v, after[f"backbone.{k}"]) for k, v in before.items() if not k.startswith("fc."))
    assert r.metrics["trainable_parameters"] == 8 * len(LABELS) + len(LABELS)
    f = r.metrics["forgetting"]
    assert f["embedding_cosine"] == pytest.approx(1.0, abs=1e-5) and f["head_agreement"] == 1.0


def test_a_program_base_becomes_a_program_regressor(bases, tmp_path):
    from compress.teachers.load import load_teacher

    _, npz = _regression_set(bases, tmp_path)
    r = finetune(bases["program"], npz, tmp_path / "t", FinetuneConfig.from_flat(task="regression", max_steps=2, batch_size=24))
    m = r.artifact.manifest
    assert (m.task, m.labels, m.outputs[0].shape) == ("regression", None, ["batch_size", 1])
    tuned = load_teacher(r.artifact.path)
    assert (tuned.task, tuned.info.kind) == ("regression", "program")


def _export_program(directory: Path, forward, yaml_file: Path, dynamic: bool = True) -> Path:
    """A tiny conv + linear module with ``forward(module, x)``, saved as a program with ``yaml_file`` beside it."""
    import shutil

    import torch

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.fc = torch.nn.Conv2d(1, 4, 3), torch.nn.Linear(4, len(LABELS))

        def forward(self, x):
            return forward(self, x)

    shapes = ({0: torch.export.Dim("batch", min=1, max=64)},) if dynamic else None
    program = torch.export.export(Net().eval(), (torch.randn(2, 1, 16, 16),), dynamic_shapes=shapes)
    directory.mkdir()
    torch.export.save(program, directory / "model.pt2")
    shutil.copy2(yaml_file, directory / "model.yaml")
    return directory


def test_program_bases_finetune_cannot_train_are_one_line_errors(bases, tmp_path, capsys):
    import torch

    def refused(base, *options) -> str:
        return main_error(capsys, "finetune", base, "--train", bases["npz"], *options, "--out", tmp_path / "out")

    line = refused(bases["program"], "--freeze", "2")
    assert "--freeze 2" in line and "torch.export program" in line and "blocks" in line
    assert "--lora-rank" in refused(bases["program"], "--lora-rank", "4")
    yaml_file = bases["program"] / "model.yaml"
    softmax = _export_program(tmp_path / "softmax", lambda m, x: torch.softmax(m.fc(m.conv(x).mean((2, 3))), -1),
                              yaml_file)
    static = _export_program(tmp_path / "static", lambda m, x: m.fc(m.conv(x).mean((2, 3))), yaml_file, dynamic=False)
    line = refused(softmax)
    assert "output comes from softmax" in line and "not a final linear layer" in line
    assert "fixed batch of 2" in refused(static)
    assert not (tmp_path / "out").exists()


def test_a_decomposed_programs_addmm_head_is_cut_off_with_its_weights(bases):
    """A program after run_decompositions() ends in addmm(bias, x, permute(weight)): the same head, the same logits."""
    import torch

    from compress.stages.finetune.programs import cut_head
    from compress.teachers.programs import load_program

    module = load_program(bases["program"] / "model.pt2").run_decompositions().module()
    assert "addmm" in str([n.target for n in module.graph.nodes])
    backbone, head = cut_head(module, "test")
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(head(backbone(x)), module(x), atol=1e-6) and head.out_features == len(LABELS)


def test_lora_on_a_cnn_whose_only_linear_layer_is_its_head_is_refused_in_one_line(bases, tmp_path):
    """Before: peft's message cut mid-word, and a hint naming query,value (a text encoder's layers)."""
    from compress.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        finetune(bases["cnn"], bases["images"], tmp_path / "t", FinetuneConfig.from_flat(lora_rank=4, **QUICK))
    assert "no linear layer besides its head" in str(e.value) and "query" not in str(e.value)
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize("pickle", [[], ["--allow-pickle"]])
def test_a_torchscript_base_is_refused_once_with_the_reason_whatever_allow_pickle_says(bases, tmp_path, capsys,
                                                                                      pickle):
    """Before: without --allow-pickle, told to pass it; with it, refused anyway (its head cannot be cut off)."""
    import shutil

    import torch

    module = torch.jit.script(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten()))
    torch.jit.save(module, str(tmp_path / "img.pt"))
    shutil.copy2(bases["program"] / "model.yaml", tmp_path / "img.yaml")
    line = main_error(capsys, "finetune", tmp_path / "img.pt", "--train", bases["images"], "--out", tmp_path / "o",
                      *pickle)
    assert "cannot cut the head off" in line and "--allow-pickle" not in line and not (tmp_path / "o").exists()
