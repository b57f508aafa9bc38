"""Device profiles: schema, built-ins, extends resolution, host detection, error messages, CLI."""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from compress.cli.profiles import profiles as profiles_cli
from compress.errors import ProfileError
from compress.profiles import host as H  # host detection reads its paths from here
from compress.profiles import load as P
from compress.profiles.load import builtin_profile_names, check_profile_file, detect_host, load_profile
from compress.profiles.schema import (
    _ARM_KEEP,
    _X86_KEEP,
    Arch,
    Budgets,
    DeviceProfile,
    HardwareFacts,
    LatencyBudget,
    MeasureConfig,
    RuntimeConfig,
)

BUILTINS = ["cpu-arm64-neon", "cpu-x86-avx2", "cpu-x86-avx512-vnni"]
REPO = Path(__file__).resolve().parents[2]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


def raises(fn, *args) -> str:
    with pytest.raises(ProfileError) as info:
        fn(*args)
    text = str(info.value)
    assert "\n" not in text, "profile errors are one line"
    return text


# ---------------------------------------------------------------------------------------- built-ins


def test_builtin_names_sorted_and_abstract_parent_hidden():
    names = builtin_profile_names()
    assert names == sorted(names)
    assert set(BUILTINS) <= set(names)
    assert not any(n.startswith("_") for n in names)


# GPU profiles (hardware.gpu) have GPU runtimes and budgets: tests/runtimes/test_gpu_runtimes.py checks them
CPU_BUILTINS = [n for n in builtin_profile_names() if load_profile(n).hardware.gpu is None]


@pytest.mark.parametrize("name", CPU_BUILTINS)
def test_every_builtin_loads(name):
    p = load_profile(name)
    assert p.name == name
    assert p.source == f"builtin:{name}"
    assert p.extends is None
    assert p.description
    if p.runtime.name == "openvino":  # intel-*-openvino: an OpenVINO device with the latency hint
        assert p.runtime.provider in ("CPU", "GPU", "NPU") and p.runtime.options == {"PERFORMANCE_HINT": "LATENCY"}
    elif p.runtime.name == "executorch":  # phones: XNNPACK chosen at export, the threads on the big cores only
        assert p.runtime.provider is None and p.runtime.threads is not None and p.hardware.arch == "arm64"
    elif p.runtime.name == "litert":  # a phone's LiteRT: XNNPACK is its default CPU delegate, threads on the big cores
        assert p.runtime.provider is None and p.runtime.options == {} and p.runtime.threads is not None
        assert p.hardware.arch == "arm64"
    elif p.runtime.name == "coreml":  # an iPhone: Core ML picks its compute units and threads itself
        assert p.runtime.provider is None and p.runtime.options["compute_units"] == "all" and p.hardware.arch == "arm64"
    else:
        assert p.runtime.name == "onnxruntime" and p.runtime.provider == "CPUExecutionProvider"
    assert p.runtime.threads is None or p.runtime.threads <= p.hardware.cores
    assert p.measure == MeasureConfig()  # batch 1 x 64 tokens etc.
    b = p.budgets
    assert (b.min_accuracy_retention, b.min_agreement, b.min_speedup) == (0.99, 0.97, 1.0)
    assert b.latency_ms.p50 and b.latency_ms.p95 and b.latency_ms.p99


@pytest.mark.parametrize("name", CPU_BUILTINS)
def test_builtin_budgets_pass_int8_minilm_and_fail_fp32_bert_base(name):
    """Reference numbers (batch 1 x 64 tokens, ONNX Runtime, 2-core AVX2 host)."""
    b = load_profile(name).budgets
    minilm_int8 = {"p50": 12.0, "size_mb": 23.0, "speedup": 15.0 / 12.0}
    assert minilm_int8["p50"] * 1.5 <= b.latency_ms.p50  # headroom for a slower core / noisy neighbour
    assert minilm_int8["size_mb"] <= b.max_model_size_mb < 90.0  # FP32 MiniLM (~90 MB) is too big
    assert minilm_int8["speedup"] >= b.min_speedup
    assert b.min_throughput <= 1000.0 / minilm_int8["p50"]
    bert_base_fp32 = {"p50": 100.0, "size_mb": 418.0}
    assert bert_base_fp32["p50"] > b.latency_ms.p99
    assert bert_base_fp32["size_mb"] > b.max_model_size_mb
    assert bert_base_fp32["size_mb"] > b.max_peak_memory_mb


def test_builtin_hardware_facts():
    avx2 = load_profile("cpu-x86-avx2").hardware
    assert avx2.arch is Arch.x86_64 and "avx2" in avx2.simd and not avx2.vnni
    vnni = load_profile("cpu-x86-avx512-vnni").hardware
    assert vnni.arch is Arch.x86_64 and "avx512_vnni" in vnni.simd and vnni.vnni  # derived
    arm = load_profile("cpu-arm64-neon").hardware
    assert arm.arch is Arch.arm64 and "neon" in arm.simd and not arm.vnni


def test_abstract_parent_is_not_loadable_by_name():
    assert "abstract" in raises(load_profile, "_cpu-base")


def test_builtin_dir_is_the_profiles_folder_in_a_source_tree():
    assert Path(str(P._builtin_dir() / "cpu-x86-avx2.yaml")).is_file()


# --------------------------------------------------------------------------------------------- host


def _cpuinfo_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="needs Linux /proc/cpuinfo")
def test_detect_host_matches_this_machine():
    host = detect_host()
    hw = host.hardware
    assert host.name == "host" and host.source == "detected" and host.extends is None
    expected_arch = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}
    assert hw.arch.value == expected_arch[platform.machine().lower()]
    assert 1 <= hw.cores <= (os.cpu_count() or 1)
    assert host.runtime.name == "onnxruntime" and host.runtime.threads == hw.cores
    assert hw.memory_mb > 0
    flags = _cpuinfo_flags()
    if hw.arch is Arch.x86_64:
        for flag in ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni"):
            assert (flag in hw.simd) == (flag in flags), flag
        assert hw.vnni == any("vnni" in f for f in flags)
        parent = "cpu-x86-avx512-vnni" if hw.vnni else "cpu-x86-avx2"
    else:
        assert ("dotprod" in hw.simd) == ("asimddp" in flags)
        parent = "cpu-arm64-neon"
    assert set(hw.simd) <= set(_X86_KEEP) | set(_ARM_KEEP) | {f for f in hw.simd if f.startswith("amx")}
    assert_host_budgets_are_relative(host)
    assert host.measure == load_profile(parent).measure


def assert_host_budgets_are_relative(host):
    """`host` judges what holds on a loaded machine too: no absolute latency, throughput or cold start."""
    b = host.budgets
    assert (b.latency_ms.p50, b.latency_ms.p95, b.latency_ms.p99) == (None, None, None)
    assert b.min_throughput is None and b.max_cold_start_ms is None
    assert b.min_speedup == 1.0 and b.min_accuracy_retention and b.min_agreement
    assert b.max_model_size_mb and b.max_peak_memory_mb


def test_load_profile_host_is_detect_host():
    assert load_profile("host") == detect_host()


def test_detect_host_arm(monkeypatch, tmp_path):
    cpuinfo = write(tmp_path / "cpuinfo", """
        processor	: 0
        BogoMIPS	: 108.00
        Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
        CPU part	: 0xd0b
    """)
    monkeypatch.setattr(H, "_CPUINFO", cpuinfo)
    monkeypatch.setattr(H, "_DEVICE_TREE_MODEL", tmp_path / "no-such-model")
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    host = detect_host()
    assert host.hardware.arch is Arch.arm64
    assert host.hardware.simd == ["neon", "dotprod", "fp16"]
    assert not host.hardware.vnni
    assert_host_budgets_are_relative(host)


def test_detect_host_x86_without_vnni(monkeypatch, tmp_path):
    cpuinfo = write(tmp_path / "cpuinfo", """
        model name	: Intel(R) Core(TM) i5-4590 CPU @ 3.30GHz
        flags		: fpu sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma f16c bmi2
    """)
    monkeypatch.setattr(H, "_CPUINFO", cpuinfo)
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    host = detect_host()
    assert host.hardware.simd == ["sse4_2", "avx", "avx2", "fma", "f16c"]
    assert host.hardware.cpu_model.startswith("Intel(R) Core(TM) i5-4590")
    assert not host.hardware.vnni
    assert_host_budgets_are_relative(host)


def test_detect_host_unsupported_arch(monkeypatch):
    monkeypatch.setattr(platform, "machine", lambda: "riscv64")
    assert "unsupported architecture 'riscv64'" in raises(detect_host)


# ------------------------------------------------------------------------------------------ extends


def test_extends_builtin_overrides_one_nested_key_keeps_siblings(tmp_path):
    f = write(tmp_path / "tight.yaml", """
        name: tight-avx2
        extends: cpu-x86-avx2
        budgets:
          latency_ms:
            p95: 30
    """)
    p = check_profile_file(f)
    base = load_profile("cpu-x86-avx2")
    assert p.name == "tight-avx2" and p.source == str(f) and p.extends is None
    assert p.budgets.latency_ms.p95 == 30
    assert p.budgets.latency_ms.p50 == base.budgets.latency_ms.p50
    assert p.budgets.latency_ms.p99 == base.budgets.latency_ms.p99
    assert p.budgets.max_model_size_mb == base.budgets.max_model_size_mb
    assert p.hardware == base.hardware and p.runtime == base.runtime
    assert p.description == base.description  # inherited; the name is not
    assert load_profile(f) == p and load_profile(str(f)) == p


def test_extends_relative_path_chain_resolves_against_the_file(tmp_path, monkeypatch):
    write(tmp_path / "devices" / "base" / "board.yaml", """
        name: board
        extends: cpu-arm64-neon
        hardware: {cores: 2, memory_mb: 2048}
        runtime: {threads: 2, options: {intra_op_spinning: false}}
    """)
    write(tmp_path / "devices" / "mid.yaml", """
        name: mid
        extends: base/board.yaml
        hardware: {simd: [asimd]}
        budgets: {min_speedup: 1.2}
    """)
    leaf = write(tmp_path / "devices" / "leaf.yaml", """
        name: leaf
        extends: ./mid.yaml
        budgets: {latency_ms: {p99: 100}}
    """)
    monkeypatch.chdir(tmp_path.parent)  # relative to the extending file, not to the cwd
    p = check_profile_file(leaf)
    assert p.name == "leaf"
    assert p.hardware.arch is Arch.arm64 and p.hardware.cores == 2 and p.hardware.memory_mb == 2048
    assert p.hardware.simd == ["neon"]  # lists are replaced, not merged; asimd spelled neon
    assert p.runtime.threads == 2 and p.runtime.options == {"intra_op_spinning": False}
    assert p.budgets.min_speedup == 1.2 and p.budgets.latency_ms.p99 == 100
    assert p.budgets.latency_ms.p50 == load_profile("cpu-arm64-neon").budgets.latency_ms.p50


def test_extends_host(tmp_path):
    f = write(tmp_path / "mine.yaml", """
        name: my-laptop
        extends: host
        budgets: {max_model_size_mb: 30}
    """)
    p = check_profile_file(f)
    host = detect_host()
    assert p.name == "my-laptop" and p.hardware == host.hardware
    assert p.budgets.max_model_size_mb == 30 and p.budgets.latency_ms == host.budgets.latency_ms


def test_extends_cycle_is_named(tmp_path):
    a = write(tmp_path / "a.yaml", "name: a\nextends: b.yaml\n")
    write(tmp_path / "b.yaml", "name: b\nextends: a.yaml\n")
    msg = raises(check_profile_file, a)
    assert msg.startswith("extends cycle: ")
    assert "a.yaml -> " in msg and "b.yaml -> " in msg and msg.count("a.yaml") >= 2


def test_extends_self_cycle(tmp_path):
    a = write(tmp_path / "self.yaml", "name: me\nextends: self.yaml\n")
    assert "extends cycle" in raises(check_profile_file, a)


def test_extends_unknown_name_and_missing_file(tmp_path):
    f = write(tmp_path / "x.yaml", "name: x\nextends: cpu-x86-avx22\n")
    msg = raises(check_profile_file, f)
    assert f"{f}: extends: unknown profile 'cpu-x86-avx22'" in msg and "did you mean cpu-x86-avx2?" in msg
    g = write(tmp_path / "y.yaml", "name: y\nextends: parent.yaml\n")
    msg = raises(check_profile_file, g)
    assert f"{g}: extends: profile file" in msg and "not found" in msg
    h = write(tmp_path / "z.yaml", "name: z\nextends: [cpu-x86-avx2]\n")
    assert f"{h}: extends: expected a profile name" in raises(check_profile_file, h)


def test_error_in_parent_names_the_parent_file(tmp_path):
    parent = write(tmp_path / "parent.yaml", """
        name: parent
        extends: cpu-x86-avx2
        hardware: {cores: -1}
    """)
    child = write(tmp_path / "child.yaml", "name: child\nextends: parent.yaml\n")
    msg = raises(check_profile_file, child)
    assert msg.startswith(f"{parent}: hardware -> cores: ")


# ---------------------------------------------------------------------------------- error messages


def test_unknown_name_suggests_close_name():
    msg = raises(load_profile, "cpu-x86-avx3")
    assert msg == "unknown profile 'cpu-x86-avx3'; did you mean cpu-x86-avx2? (see `edgecompress profiles list`)"


def test_unknown_name_without_close_match_lists_known():
    msg = raises(load_profile, "jetson")
    assert "unknown profile 'jetson'" in msg
    for name in [*BUILTINS, "host"]:
        assert name in msg


def test_missing_file(tmp_path):
    msg = raises(load_profile, str(tmp_path / "nope.yaml"))
    assert "not found" in msg and "nope.yaml" in msg
    assert "pass its name: cpu-x86-avx2" in raises(load_profile, "cpu-x86-avx2.yaml")


def test_directory_instead_of_file(tmp_path):
    assert "is a directory" in raises(check_profile_file, tmp_path)


def test_invalid_yaml_reports_line(tmp_path):
    f = write(tmp_path / "bad.yaml", """
        name: bad
        hardware:
          arch: x86_64
           cores: 2
    """)
    msg = raises(check_profile_file, f)
    assert msg.startswith(f"{f}: invalid YAML at line 4")


def test_duplicate_key_reports_line(tmp_path):
    f = write(tmp_path / "dup.yaml", """
        name: dup
        extends: cpu-x86-avx2
        budgets:
          latency_ms:
            p95: 30
            p95: 35
    """)
    msg = raises(check_profile_file, f)
    assert "line 6" in msg and "duplicate key 'p95' (first at line 5)" in msg


@pytest.mark.parametrize("text, what", [("- a\n- b\n", "got a list"), ("just text\n", "got a string"), ("", "empty")])
def test_not_a_mapping(tmp_path, text, what):
    f = tmp_path / "odd.yaml"
    f.write_text(text)
    msg = raises(check_profile_file, f)
    assert msg.startswith(f"{f}: ") and what in msg


def test_invalid_field_reports_path(tmp_path):
    f = write(tmp_path / "neg.yaml", """
        name: neg
        extends: cpu-x86-avx2
        budgets:
          latency_ms:
            p95: -5
    """)
    msg = raises(check_profile_file, f)
    assert msg.startswith(f"{f}: budgets -> latency_ms -> p95: Input should be greater than 0; ")
    assert "ms" in msg.split("; ", 1)[1]  # the hint says what is expected
    assert "(and" not in msg


def test_several_errors_counted(tmp_path):
    f = write(tmp_path / "many.yaml", """
        name: many
        extends: cpu-x86-avx2
        hardware: {cores: 0}
        budgets: {min_agreement: 1.5, latency_ms: {p99: -1}}
    """)
    msg = raises(check_profile_file, f)
    assert msg.startswith(f"{f}: hardware -> cores: ") and "(and 2 more)" in msg


def test_extra_key_rejected_with_its_name(tmp_path):
    f = write(tmp_path / "typo.yaml", """
        name: typo
        extends: cpu-x86-avx2
        budgets:
          latncy_ms: {p50: 10}
    """)
    msg = raises(check_profile_file, f)
    assert msg.startswith(f"{f}: budgets -> latncy_ms: unknown key; did you mean latency_ms?")
    g = write(tmp_path / "top.yaml", "name: top\nextends: cpu-x86-avx2\nbudget: {}\n")
    assert "budget: unknown key; did you mean budgets?" in raises(check_profile_file, g)


def test_missing_required_fields(tmp_path):
    f = write(tmp_path / "noname.yaml", "extends: cpu-x86-avx2\n")
    assert raises(check_profile_file, f).startswith(f"{f}: name: Field required")
    g = write(tmp_path / "nohw.yaml", "name: nohw\n")
    assert raises(check_profile_file, g).startswith(f"{g}: hardware: Field required")


def test_invalid_name_pattern(tmp_path):
    f = write(tmp_path / "n.yaml", "name: My_Device\nextends: cpu-x86-avx2\n")
    msg = raises(check_profile_file, f)
    assert msg.startswith(f"{f}: name: ") and "lowercase" in msg


def test_unknown_runtime_lists_valid_ones(tmp_path):
    f = write(tmp_path / "rt.yaml", "name: rt\nextends: cpu-x86-avx2\nruntime: {name: onnx}\n")
    msg = raises(check_profile_file, f)
    assert msg.startswith(f"{f}: runtime -> name: unknown runtime 'onnx'; valid runtimes: onnxruntime, openvino")


def test_latency_order_checked(tmp_path):
    f = write(tmp_path / "o.yaml", "name: o\nextends: cpu-x86-avx2\nbudgets: {latency_ms: {p50: 50}}\n")
    assert f"{f}: budgets -> latency_ms: p50 (50 ms) must be <= p95 (40 ms)" in raises(check_profile_file, f)


# ------------------------------------------------------------------------------------------- schema


def test_schema_forbids_extra_and_describes_every_field():
    for model in (HardwareFacts, RuntimeConfig, MeasureConfig, LatencyBudget, Budgets, DeviceProfile):
        assert model.model_config.get("extra") == "forbid", model
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"


def test_hardware_normalisation_and_vnni():
    hw = HardwareFacts(arch="aarch64", cores=4, simd=["ASIMD", "asimddp", "neon"], memory_mb=1024)
    assert hw.arch is Arch.arm64 and hw.simd == ["neon", "dotprod"] and hw.vnni is False
    assert HardwareFacts(arch="amd64", cores=1, simd=["avx_vnni"], memory_mb=1).vnni is True
    assert HardwareFacts(arch="x86_64", cores=1, simd=["avx512_vnni"], vnni=False, memory_mb=1).vnni is False
    assert HardwareFacts(arch="x86_64", cores=1, simd=[], vnni=True, memory_mb=1).vnni is True
    with pytest.raises(ValueError, match="do not exist on arch arm64"):
        HardwareFacts(arch="arm64", cores=1, simd=["avx2"], memory_mb=1)


def test_value_ranges():
    with pytest.raises(ValueError):
        Budgets(min_accuracy_retention=1.6)
    with pytest.raises(ValueError):
        Budgets(min_agreement=1.01)
    with pytest.raises(ValueError):
        Budgets(min_speedup=0)
    with pytest.raises(ValueError):
        RuntimeConfig(threads=0)
    with pytest.raises(ValueError, match="max_runs"):
        MeasureConfig(min_runs=100, max_runs=10)
    assert Budgets().min_accuracy_retention == 0.99 and Budgets().min_agreement == 0.97
    assert LatencyBudget(p50=10, p99=20).p95 is None


def test_threads_over_cores_is_a_warning(caplog):
    data = load_profile("cpu-x86-avx2").model_dump()
    data["runtime"]["threads"] = 64
    with caplog.at_level(logging.WARNING, logger="compress.profiles.load"):
        p = DeviceProfile.model_validate(data)
    assert p.runtime.threads == 64
    assert "threads=64 exceeds hardware.cores=2" in caplog.text


def test_import_is_lean():
    code = "import sys, compress.profiles.load, compress.cli.profiles; print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch','onnxruntime','openvino','tensorrt','transformers')))"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_list():
    result = CliRunner().invoke(profiles_cli, ["list"])
    assert result.exit_code == 0, result.output
    for name in [*BUILTINS, "host"]:
        assert name in result.output


def test_cli_list_json():
    result = CliRunner().invoke(profiles_cli, ["list", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [d["name"] for d in data] == [*builtin_profile_names(), "host"]
    assert all(DeviceProfile.model_validate(d) for d in data)


def test_cli_show_yaml_round_trips(tmp_path):
    result = CliRunner().invoke(profiles_cli, ["show", "cpu-x86-avx512-vnni"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("# cpu-x86-avx512-vnni, fully resolved")
    data = yaml.safe_load(result.output)
    assert data["budgets"]["min_agreement"] == 0.97 and "extends" not in data
    saved = tmp_path / "copy.yaml"
    saved.write_text(result.output)
    assert check_profile_file(saved).model_dump(exclude={"source"}) == load_profile(
        "cpu-x86-avx512-vnni"
    ).model_dump(exclude={"source"})


def test_cli_show_json_and_file(tmp_path):
    result = CliRunner().invoke(profiles_cli, ["show", "host", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["source"] == "detected"
    f = write(tmp_path / "mine.yaml", "name: mine\nextends: cpu-arm64-neon\n")
    result = CliRunner().invoke(profiles_cli, ["show", str(f)])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.output)["name"] == "mine"


def test_cli_check(tmp_path):
    f = write(tmp_path / "ok.yaml", "name: ok-device\nextends: cpu-x86-avx2\n")
    result = CliRunner().invoke(profiles_cli, ["check", str(f)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"{f}: valid profile ok-device"


def test_cli_check_invalid_propagates_profile_error(tmp_path):
    f = write(tmp_path / "bad.yaml", "name: bad\nextends: cpu-x86-avx2\nbudgets: {latency_ms: {p95: 0}}\n")
    result = CliRunner().invoke(profiles_cli, ["check", str(f)])
    assert result.exit_code != 0
    assert isinstance(result.exception, ProfileError)
    assert "budgets -> latency_ms -> p95" in str(result.exception)


def test_cli_show_unknown_propagates_profile_error():
    result = CliRunner().invoke(profiles_cli, ["show", "cpu-x86-avx3"])
    assert isinstance(result.exception, ProfileError)
    assert "did you mean cpu-x86-avx2?" in str(result.exception)
