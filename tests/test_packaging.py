"""The wheel: the repository's top-level ``runtimes/`` and ``profiles/`` folders ship inside ``compress``
(``compress.runtimes``, ``compress.builtin_profiles``), the sample data ships, the console script is
declared, and the installed layout works without the source tree.

The wheel is built once per module with ``python -m build --wheel --no-isolation`` (the venv's
setuptools, no downloads; a few seconds). It is built from a copy of the packaging inputs in a temporary
directory rather than the checkout itself, so setuptools' ``build/`` and ``*.egg-info`` folders never
land in the working tree, and a stale ``build/lib`` can never smuggle deleted files into the wheel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD_TIMEOUT_S = 120  # ~10 s normally; generous for a loaded 2-core machine

pytest.importorskip("build", reason="the 'build' package is needed (pip install edgecompress[test])")


def _copy_sources(dst: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")
    for name in ("pyproject.toml", "README.md", "LICENSE", "setup.cfg", "setup.py", "MANIFEST.in"):
        if (ROOT / name).is_file():
            shutil.copy2(ROOT / name, dst / name)
    for folder in ("compress", "runtimes", "profiles"):
        shutil.copytree(ROOT / folder, dst / folder, ignore=ignore)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    out = tmp_path_factory.mktemp("dist")
    _copy_sources(src)
    proc = subprocess.run(
        # --skip-dependency-check: build-system.requires lists "wheel", which setuptools >= 70.1 no longer
        # needs (bdist_wheel is built in) and which the venv may lack
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--skip-dependency-check", "--outdir", str(out)],
        cwd=src, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    wheels = list(out.glob("edgecompress-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def names(wheel) -> set[str]:
    with zipfile.ZipFile(wheel) as zf:
        return set(zf.namelist())


@pytest.fixture(scope="module")
def extracted(wheel, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("site")
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(d)
    return d


def _dist_info_file(names: set[str], filename: str) -> str:
    found = [n for n in names if n.count("/") == 1 and n.split("/")[0].endswith(".dist-info")
             and n.endswith("/" + filename)]
    assert len(found) == 1, (filename, sorted(names))
    return found[0]


def test_wheel_contains_the_mapped_packages_and_data(names):
    required = [
        "compress/__init__.py",
        "compress/cli/__init__.py",
        "compress/stages/__init__.py",
        "compress/runtimes/__init__.py",
        "compress/runtimes/base.py",
        "compress/runtimes/ort_backend.py",
        "compress/runtimes/torch_backend.py",
        "compress/builtin_profiles/cpu-x86-avx2.yaml",
        "compress/data/samples/sentiment.tsv",
    ]
    # every Python package of the source tree (a package missing from pyproject's list installs only editable)
    required += [f"{p.parent.relative_to(ROOT).as_posix()}/__init__.py" for p in (ROOT / "compress").rglob("__init__.py")]
    required += ["compress/recipes/demo.yaml", "compress/reports/templates/report.html.j2"]
    missing = [n for n in required if n not in names]
    assert not missing, missing


def test_wheel_ships_every_profile_yaml(names):
    yamls = sorted(p.name for p in (ROOT / "profiles").glob("*.yaml"))
    assert yamls, "no profiles/*.yaml in the repository"
    missing = [y for y in yamls if f"compress/builtin_profiles/{y}" not in names]
    assert not missing, missing
    for module in sorted(p.name for p in (ROOT / "runtimes").glob("*.py")):
        assert f"compress/runtimes/{module}" in names, module


def test_wheel_has_no_generic_top_level_packages(names):
    top = {n.split("/")[0] for n in names}
    assert "runtimes" not in top and "profiles" not in top, sorted(top)
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)
    assert top - {"compress"} == {t for t in top if t.endswith(".dist-info")}, sorted(top)


def test_wheel_declares_the_console_script(wheel, names):
    with zipfile.ZipFile(wheel) as zf:
        entry_points = zf.read(_dist_info_file(names, "entry_points.txt")).decode()
        metadata = zf.read(_dist_info_file(names, "METADATA")).decode()
    lines = [line.strip() for line in entry_points.splitlines()]
    section = lines[lines.index("[console_scripts]") + 1:]
    assert any(line.replace(" ", "") == "edgecompress=compress._entry:main" for line in section), entry_points  # the guarded entry
    assert "Name: edgecompress" in metadata


INSTALLED_CHECK = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import compress
    from compress.profiles.load import builtin_profile_names, load_profile

    site = Path(sys.argv[1]).resolve()
    assert Path(compress.__file__).resolve().is_relative_to(site), compress.__file__  # not the checkout
    names = builtin_profile_names()
    print("names=" + ",".join(names))
    for name in names:
        assert load_profile(name).name == name, name
    p = load_profile("cpu-x86-avx2")
    assert p.source == "builtin:cpu-x86-avx2", p.source
    assert p.budgets.latency_ms.p50 is not None
    heavy = [m for m in ("torch", "onnxruntime", "transformers") if m in sys.modules]
    assert not heavy, heavy  # profiles load without the ML stack

    import compress.runtimes
    assert Path(compress.runtimes.__file__).resolve() == site / "compress" / "runtimes" / "__init__.py"
    from compress.runtimes.base import RUNTIMES
    assert "onnxruntime" in RUNTIMES

    from compress.data.tables import sample_data_path
    assert sample_data_path().resolve().is_relative_to(site)
    try:
        import runtimes  # the source tree's runtimes/ must not be importable under its own name
    except ImportError:
        pass
    else:
        raise AssertionError("a top-level 'runtimes' package is importable")
    print("ok")
    """
)


def test_extracted_wheel_works_without_the_checkout(extracted, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONPATH"] = str(extracted)
    # cwd is an empty directory, so the checkout is not on sys.path; the venv's editable install of the
    # checkout sits behind PYTHONPATH, and the script checks every module came from the wheel.
    proc = subprocess.run([sys.executable, "-c", INSTALLED_CHECK, str(extracted)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert out[-1] == "ok"
    shipped = sorted(p.stem for p in (ROOT / "profiles").glob("*.yaml") if not p.name.startswith("_"))
    assert out[0] == "names=" + ",".join(shipped)
