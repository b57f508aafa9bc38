"""Every import docs/reference/python-api.md documents works, and ``from compress import validate`` is the function.

Each check runs in a fresh interpreter: what a module import leaves behind (``compress.validate`` the
module shadowing the lazy export) only shows in a process that has not imported it yet.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

API_PAGE = Path(__file__).resolve().parents[1] / "docs" / "reference" / "python-api.md"


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def _api_imports() -> list[str]:
    """Every ``from compress... import`` / ``import compress...`` line of the page's python code blocks."""
    text = API_PAGE.read_text(encoding="utf-8")
    blocks = re.findall(r"^```python\n(.*?)^```", text, re.M | re.S)
    return [ln.split("#")[0].strip() for block in blocks
            for ln in re.findall(r"^(?:from compress[\w.]* import|import compress)[^\n]*$", block, re.M)]


@pytest.mark.parametrize("line", _api_imports())
def test_every_documented_import_works(line):
    proc = _python(line)
    assert proc.returncode == 0, proc.stderr


def test_the_page_documents_the_api():
    lines = _api_imports()
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


def test_the_stage_families_defining_modules_import():
    """The verbs and their settings, from the modules that define them (the names the docs use besides ``compress``)."""
    proc = _python("from compress.stages.export.tensorrt import check_tensorrt_qdq; "
                   "from compress.stages.export.config import ExportConfig; from compress.stages.export import export; "
                   "from compress.stages.quantize.config import QuantizeConfig; from compress.stages.quantize import quantize; "
                   "import compress; assert compress.export is export and compress.quantize is quantize; "
                   "assert compress.ExportConfig is ExportConfig and compress.QuantizeConfig is QuantizeConfig")
    assert proc.returncode == 0, proc.stderr
