#!/usr/bin/env python
"""A ``torch.export`` program as the base of ``edgecompress finetune`` (issue 39), on a real network: the ImageNet
MobileNetV2 of ``benchmarks/vision/transfer_digits.py`` (its timm checkpoint at 112 px) saved as ``model.pt2`` with its
``model.yaml``, fine-tuned on 10% of the digits with the transfer benchmark's settings (300 steps of 32, the mode's
default learning rate, the last weights measured on the 360 test digits), whole and as a linear probe. The same
rows of ``results/transfer_digits.json`` (the timm checkpoint as the base) are the comparison: the program's graph
keeps its exported semantics (BatchNorm on its running statistics), the checkpoint trains as an ``nn.Module``.

    python benchmarks/vision/transfer_digits.py && python benchmarks/vision/program_base.py     # results/program_base.json
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: benchmarks.harness
WORK = HERE / ".cache" / "transfer-digits"


def program_base(out: Path) -> Path:
    """The pretrained timm checkpoint as a program (batch dynamic) with its description; the program's logits equal
    the module's."""
    import torch
    import yaml

    from compress.teachers.images import load_image_teacher

    if (out / "model.pt2").is_file():
        return out / "model.pt2"
    teacher = load_image_teacher(WORK / "mobilenetv2-imagenet")
    size = json.loads((WORK / "mobilenetv2-imagenet" / "config.json").read_text())["pretrained_cfg"]["input_size"]
    x = torch.randn(2, *size)  # the size the checkpoint is read at (112), not the architecture's default (224)
    program = torch.export.export(teacher.model.eval(), (x,),
                                  dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},))
    with torch.inference_mode():
        assert torch.allclose(program.module()(x), teacher.model(x), atol=1e-4)
    out.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, out / "model.pt2")
    pre = teacher.info.preprocess.model_dump(mode="json", exclude={"kind", "input_name"})
    (out / "model.yaml").write_text(yaml.safe_dump({
        "task": "image-classification", "labels": [f"imagenet{i}" for i in range(1000)], "preprocess": pre,
        "architecture": "mobilenetv2_100 IMAGENET1K_V1 (torch.export)"}, sort_keys=False), encoding="utf-8")
    return out / "model.pt2"


def main() -> int:
    from transfer_digits import test_accuracy

    import compress  # noqa: F401 - torchvision's schemas before timm
    from benchmarks.harness.results import write_results
    from compress.stages.finetune import finetune
    from compress.stages.finetune.config import FinetuneConfig

    base = program_base(WORK / "mobilenetv2-imagenet-program")
    timm_rows = json.loads((HERE / "results" / "transfer_digits.json").read_text())["runs"]
    rows = {}
    for name, freeze, timm_key in (("whole", 0, "full fine-tune (pretrained) @ 10%"),
                                   ("--freeze all", "all", "frozen backbone (pretrained) @ 10%")):
        t0 = time.perf_counter()
        r = finetune(base, WORK / "train-10.npz", WORK / f"program_{freeze or 'whole'}_10", FinetuneConfig.from_flat(
            max_steps=300, batch_size=32, freeze=freeze, labels=None, eval_every=300), force=True)
        rows[name] = {"test_accuracy": test_accuracy(r.artifact.path, HERE / ".cache" / "digits" / "test.npz"),
                      "timm_checkpoint_test_accuracy": timm_rows[timm_key]["test_accuracy"],
                      "trainable_parameters": r.metrics["trainable_parameters"], "lr": r.metrics["lr"],
                      "train_seconds": r.metrics["train_seconds"], "wall_seconds": round(time.perf_counter() - t0, 1)}
        print(f"program base, {name}: {json.dumps(rows[name])}", flush=True)
    write_results(HERE / "results" / "program_base.json",
                  {"base": str(base.relative_to(HERE)), "train": "10% of the digits (142 images)", "steps": 300,
                   "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
