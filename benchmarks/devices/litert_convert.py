#!/usr/bin/env python
"""The ``.tflite`` INT8 models of ``benchmarks/devices/mobile.py``, made where litert-torch installs (an environment of its own:
litert-torch 0.10 pins xdsl 0.28 and with it typing-extensions < 4.13, which this project's pydantic and executorch
refuse; docs/guides/phones.md).

For each model of the mobile benchmark: ``edgecompress export --format litert`` (litert-torch's conversion, checked
against PyTorch FP32 in LiteRT's interpreter; text at 128 tokens), then ai-edge-quantizer's ``dynamic_wi8_afp32``
recipe (INT8 weights, activations quantized at run time: the LiteRT counterpart of the dynamic INT8 the other two
runtimes get for text). Writes ``WORK/<model>/tflite-int8/`` as a model file made elsewhere: ``model.tflite``, its
``model.yaml`` (for text, with the inputs' names) and, for text, the tokenizer; ``benchmarks/devices/mobile.py`` adopts it.

    python3 -m venv /tmp/litert && . /tmp/litert/bin/activate
    pip install torch==2.13.0 && pip install litert-torch==0.10.0 ai-edge-litert click rich pyyaml
    pip install --no-deps -e .          # edgecompress itself, without its pins
    python benchmarks/devices/litert_convert.py
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: benchmarks.harness
from benchmarks.harness.teachers import DEFAULT_DATA, device_panel


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=HERE / ".cache" / "mobile")
    args = ap.parse_args()
    from ai_edge_quantizer import quantizer, recipe

    import compress  # noqa: F401
    from compress.artifact import load_artifact
    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig

    for name, m in device_panel().items():
        d = args.work / name.split(" (")[0].replace(" ", "-").lower()
        fp32, out = d / "tflite-fp32", d / "tflite-int8"
        if not (out / "model.tflite").is_file():  # converted once; its model.yaml is written every time
            sample = str(DEFAULT_DATA / "dev.tsv") if m["kind"] == "text" else None
            art = export(m["source"], fp32, ExportConfig(format="litert", sample_data=sample), force=True)
            qt = quantizer.Quantizer(str(art.model_path))
            qt.load_quantization_recipe(recipe.dynamic_wi8_afp32())
            out.mkdir(parents=True, exist_ok=True)
            qt.quantize().export_model(str(out / "model.tflite"), overwrite=True)
        man = load_artifact(fp32, verify=False).manifest
        desc = {"task": str(man.task), "labels": man.labels, "architecture": f"{name} (litert-torch, ai-edge-quantizer "
                "dynamic_wi8_afp32)"}
        if m["kind"] == "text":
            for f in fp32.glob("tokenizer*.json"):
                shutil.copy2(f, out / f.name)
            desc["preprocess"] = {"kind": "text"}
            desc["max_length"] = man.max_length
            # the converter names the inputs args_0, args_1, ...: the tokenizer's names, in the file's order
            desc["inputs"] = {t.name: {"shape": list(t.shape[1:]), "dtype": "int32"} for t in man.inputs}
        else:
            desc["preprocess"] = man.preprocess.model_dump(mode="json", exclude={"kind", "input_name"})
        (out / "model.yaml").write_text(yaml.safe_dump(desc, sort_keys=False), encoding="utf-8")
        print(f"wrote {out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
