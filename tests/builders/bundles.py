"""Serverless profiles and running a bundle's handler in a fresh interpreter with only its dependencies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml

from compress.packaging.config import KIND_DEPENDENCIES

#: a text artifact's bundle: onnxruntime, tokenizers, numpy
DIRECT_DEPENDENCIES = KIND_DEPENDENCIES["text"]


LAMBDA_TIERS = [
    {"memory_mb": 128, "vcpus": 0.07}, {"memory_mb": 1024, "vcpus": 0.58}, {"memory_mb": 1769, "vcpus": 1},
    {"memory_mb": 3538, "vcpus": 2}, {"memory_mb": 10240, "vcpus": 6},
]


def write_profile(directory: Path, name: str = "test-lambda-arm64", arch: str = "arm64",
                  platforms: tuple[str, ...] = ("manylinux2014_aarch64", "manylinux_2_28_aarch64"),
                  **serverless) -> Path:
    """A serverless profile with AWS Lambda's facts (override any serverless: key)."""
    sl = {
        "platform": "aws-lambda", "python_version": "3.12", "pip_platforms": list(platforms),
        "max_zipped_mb": 50, "max_unzipped_mb": 250, "memory_mb": 1769, "memory_to_vcpu": LAMBDA_TIERS,
        "handler": "handler.handler", **serverless,
    }
    data = {
        "name": name, "description": "AWS Lambda stand-in for tests",
        "hardware": {"arch": arch, "cores": 2, "memory_mb": sl["memory_mb"]},
        "runtime": {"name": "onnxruntime"},
        "budgets": {"max_cold_start_ms": 60000, "min_accuracy_retention": None, "min_agreement": None,
                    "min_speedup": None},
        "serverless": sl,
    }
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def site_dirs() -> list[str]:
    """Where this environment's onnxruntime, tokenizers and numpy live (the handler's only dependencies)."""
    import importlib.util

    out: list[str] = []
    for name in DIRECT_DEPENDENCIES:
        d = str(Path(importlib.util.find_spec(name).origin).resolve().parent.parent)
        if d not in out:
            out.append(d)
    return out


def run_handler(bundle_dir: Path, code: str) -> dict:
    """Run ``code`` in a fresh ``python -S`` with only the bundle and the three dependencies on the path."""
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": os.pathsep.join([str(bundle_dir), *site_dirs()]),
           "PYTHONDONTWRITEBYTECODE": "1", "HOME": str(bundle_dir)}
    proc = subprocess.run([sys.executable, "-S", "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, cwd=bundle_dir, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
