"""Host facts have one home, compress/device/facts.py (shipped to devices as edgecompress_facts.py): the CPU's
name, the one table of Arm cores, peak memory and file hashes; this machine and a device read them alike."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

from compress.device import facts
from compress.device.facts import ARM_PARTS, arm_core, cpu_model, cpuinfo, peak_rss_mb, sha256_file
from compress.validation.ssh import MARKER, preflight_program

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted([*(ROOT / "compress").rglob("*.py"), *(ROOT / "runtimes").rglob("*.py")])
PART = re.compile(r"0x[0-9a-f]{3}$", re.IGNORECASE)


def test_one_table_of_arm_parts():
    """No second dict keyed by Arm part numbers anywhere in the library."""
    tables = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Dict):
                keys = [k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)]
                if sum(bool(PART.match(k)) for k in keys) >= 3:
                    tables.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert len(tables) == 1 and tables[0].startswith("compress/device/facts.py:"), tables


def test_one_definition_of_each_host_fact():
    defined: dict[str, list[str]] = {}
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef) and re.search(r"cpu_model|peak_rss|hwm|sha256", node.name):
                defined.setdefault(node.name.lstrip("_"), []).append(str(path.relative_to(ROOT)))
    assert defined.get("cpu_model") == ["compress/device/facts.py"], defined
    # the runner's peak_rss_mb calls the shipped facts'
    assert sorted(defined.get("peak_rss_mb", [])) == ["compress/device/facts.py", "compress/device/remote_runner.py"]
    # the runner's own sha256_file verifies the shipped files (edgecompress_facts.py among them) before importing any
    assert sorted(defined.get("sha256_file", [])) == ["compress/device/facts.py", "compress/device/remote_runner.py"]
    readers = [str(p.relative_to(ROOT)) for p in SOURCES if "VmHWM:" in p.read_text(encoding="utf-8")]
    assert readers == ["compress/device/facts.py"], readers


def test_arm_parts_follow_the_kernel_numbering():
    names = {part: name for part, (name, _) in ARM_PARTS.items()}
    for part, name in (("0xd03", "Cortex-A53"), ("0xd05", "Cortex-A55"), ("0xd08", "Cortex-A72"),
                       ("0xd0b", "Cortex-A76"), ("0xd0c", "Neoverse-N1"), ("0xd40", "Neoverse-V1"),
                       ("0xd44", "Cortex-X1"), ("0xd4f", "Neoverse-V2"), ("0xd82", "Cortex-X4"), ("0xc07", "Cortex-A7")):
        assert names[part] == name
    assert all(flops in (None, 8, 16, 32) for _, flops in ARM_PARTS.values())


def test_cpu_model_most_informative_first(monkeypatch):
    arm = cpuinfo("processor : 0\nCPU implementer : 0x41\nCPU part : 0xd0b\n")
    assert arm_core(arm) == "Cortex-A76"
    assert arm_core({"cpu implementer": "0x51", "cpu part": "0xd0b"}) is None  # Qualcomm numbers its own parts
    assert cpu_model({"model name": "AMD EPYC 7B13", "hardware": "x"}, board="") == "AMD EPYC 7B13"
    assert cpu_model({"hardware": "BCM2835", **arm}, board="Raspberry Pi 5") == "BCM2835"
    assert cpu_model(arm, board="Raspberry Pi 5 Model B") == "Cortex-A76"
    assert cpu_model({"cpu part": "0xd0b"}, board="Raspberry Pi 5 Model B") == "Raspberry Pi 5 Model B"
    monkeypatch.setattr(facts.sys, "platform", "linux")
    monkeypatch.setattr(facts.platform, "processor", lambda: "")
    assert cpu_model({}, board="") == facts.platform.machine()


def test_sha256_and_peak_memory(tmp_path):
    import hashlib

    f = tmp_path / "f.bin"
    f.write_bytes(b"x" * 3000)
    assert sha256_file(f, chunk=1024) == hashlib.sha256(b"x" * 3000).hexdigest()
    assert peak_rss_mb() > 1


def test_preflight_program_carries_the_device_module():
    """``check`` runs piped to ``python -`` before anything is sent: the device facts come from the device code's parts
    compiled into the program, not from an installed edgecompress."""
    no_edgecompress = b"import sys\nsys.modules['compress'] = None\n"  # as on a board: not importable
    proc = subprocess.run([sys.executable, "-", "check", "--runtime", "onnxruntime"],
                          input=no_edgecompress + preflight_program(),
                          capture_output=True, timeout=120, cwd="/")
    assert proc.returncode == 0, proc.stderr.decode()
    res = json.loads(proc.stdout.decode().strip().splitlines()[-1][len(MARKER):])
    assert res["ok"] and res["device"]["cpu"] == cpu_model()
