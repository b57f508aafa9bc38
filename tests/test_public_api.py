"""Every import the README documents works, and ``from compress import validate`` is the function.

Each check runs in a fresh interpreter: what a module import leaves behind (``compress.validate`` the
module shadowing the lazy export) only shows in a process that has not imported it yet.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def _readme_imports() -> list[str]:
    text = README.read_text(encoding="utf-8")
    block = text[text.index("## Python API"):text.index("## Layout")]
    return [ln.split("#")[0].strip() for ln in re.findall(r"^(?:from|import) compress[^\n]*$", block, re.M)]


@pytest.mark.parametrize("line", _readme_imports())
def test_every_readme_import_works(line):
    proc = _python(line)
    assert proc.returncode == 0, proc.stderr


def test_readme_documents_the_api():
    lines = _readme_imports()
    assert any("validate" in ln and ln.startswith("from compress import") for ln in lines)
    assert len(lines) >= 5


def test_from_compress_import_validate_is_the_function():
    proc = _python("import inspect; from compress import validate, ValidateConfig; "
                   "assert inspect.isfunction(validate), validate; print(validate.__module__)")
    assert proc.returncode == 0 and proc.stdout.strip() == "compress.validation.local", proc.stderr


def test_lazy_names_resolve_without_heavy_imports():
    import compress

    code = ("import sys, compress; names = [n for n in compress.__all__ if n != '__version__']; "
            "[getattr(compress, n) for n in names]; print(len(names))")
    proc = _python(code)
    assert proc.returncode == 0 and int(proc.stdout) == len(compress.__all__) - 1, proc.stderr


def test_the_old_validate_path_still_works_and_stays_callable():
    proc = _python("from compress.validate import ValidateConfig, ValidationReport; import compress; "
                   "assert callable(compress.validate); from compress import validate; assert callable(validate)")
    assert proc.returncode == 0, proc.stderr


def test_paths_the_readme_named_before_the_stage_families_became_packages_still_work():
    proc = _python("from compress.stages.tensorrt import check_tensorrt_qdq; "
                   "from compress.stages.export.tensorrt import check_tensorrt_qdq as new; assert check_tensorrt_qdq is new; "
                   "from compress.stages.export import ExportConfig, export; "
                   "from compress.stages.quantize import QuantizeConfig, quantize")
    assert proc.returncode == 0, proc.stderr
