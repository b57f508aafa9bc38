"""Board and serverless profiles: facts, peaks, serverless limits, and "is this machine that device?"."""

from __future__ import annotations

import platform
import textwrap
from pathlib import Path

import pytest

from compress.errors import ProfileError
from compress.profiles import host as H  # host detection reads its paths from here
from compress.profiles import load as P
from compress.profiles.host import derive_peaks, flops_per_cycle, match_device
from compress.profiles.load import check_profile_file, load_profile
from compress.profiles.schema import Arch

BOARDS = ["raspberry-pi-4", "raspberry-pi-5", "jetson-orin-nano", "intel-nuc", "cpu-arm64-graviton"]
SERVERLESS = ["aws-lambda-x86_64", "aws-lambda-arm64", "gcp-cloud-run"]
CLASSES = ["cpu-x86-avx2", "cpu-x86-avx512-vnni", "cpu-arm64-neon"]


@pytest.mark.parametrize("name", BOARDS + SERVERLESS)
def test_profile_loads_with_roofline_facts(name):
    p = load_profile(name)
    hw = p.hardware
    assert p.name == name and p.source == f"builtin:{name}"
    assert hw.arch in (Arch.x86_64, Arch.arm64) and hw.cores >= 1 and hw.memory_mb >= 1024
    assert hw.simd and hw.cpu_model
    assert hw.peak_gflops_fp32 and hw.peak_gops_int8 and hw.memory_bandwidth_gbs and hw.clock_ghz
    assert hw.peak_gops_int8 >= hw.peak_gflops_fp32  # INT8 never slower than FP32 at peak
    assert hw.identify, "named devices say how to recognise them"
    assert p.budgets.latency_ms.p50 and p.budgets.max_cold_start_ms
    assert (p.serverless is not None) == (name in SERVERLESS)


@pytest.mark.parametrize("name", CLASSES)
def test_class_profiles_have_no_identify(name):
    assert load_profile(name).hardware.identify is None


@pytest.mark.parametrize("name, per_cycle", [
    ("raspberry-pi-4", 8), ("raspberry-pi-5", 16), ("jetson-orin-nano", 16), ("cpu-arm64-graviton", 32),
])
def test_board_peaks_are_cores_x_clock_x_flops_per_cycle(name, per_cycle):
    hw = load_profile(name).hardware
    assert hw.peak_gflops_fp32 == pytest.approx(hw.cores * hw.clock_ghz * per_cycle, rel=0.01)


def test_nuc_peaks_count_the_p_cores_it_runs_on():
    p = load_profile("intel-nuc")
    assert p.runtime.threads == 4 and p.hardware.cores == 12
    assert p.hardware.peak_gflops_fp32 == pytest.approx(4 * p.hardware.clock_ghz * 32)
    assert p.hardware.vnni  # avx_vnni


def test_dot_product_where_the_core_has_it():
    assert "dotprod" not in load_profile("raspberry-pi-4").hardware.simd  # Cortex-A72: ARMv8.0
    for name in ("raspberry-pi-5", "jetson-orin-nano", "cpu-arm64-graviton", "aws-lambda-arm64"):
        assert "dotprod" in load_profile(name).hardware.simd, name
    assert {"sve", "i8mm", "bf16"} <= set(load_profile("cpu-arm64-graviton").hardware.simd)


@pytest.mark.parametrize("name, arch", [("aws-lambda-x86_64", "x86_64"), ("aws-lambda-arm64", "aarch64")])
def test_lambda_limits(name, arch):
    p = load_profile(name)
    s = p.serverless
    assert s.platform == "aws-lambda" and s.python_version == "3.12" and s.memory_mb == 2048
    assert s.max_zipped_mb == 50 and s.max_unzipped_mb == 250
    assert s.pip_platforms and all(t.endswith(arch) for t in s.pip_platforms)
    assert s.vcpus_for(1769) == 1.0 and s.vcpus_for(10240) == 6.0
    assert s.vcpus_for(2048) == pytest.approx(2048 / 1769, abs=0.01)
    tiers = [t.memory_mb for t in s.memory_to_vcpu]
    assert tiers == sorted(tiers)
    for t in s.memory_to_vcpu:  # proportional: 1 vCPU per 1769 MB, at most 6
        assert t.vcpus == pytest.approx(min(6.0, t.memory_mb / 1769), rel=0.05, abs=0.01)
    b = p.budgets
    assert (b.max_package_zipped_mb, b.max_package_unzipped_mb) == (50, 250)
    # peaks are those of the vCPU share the function gets at its memory size
    per_vcpu = p.hardware.peak_gflops_fp32 / s.vcpus_for(s.memory_mb)
    assert per_vcpu == pytest.approx(p.hardware.clock_ghz * (32 if arch == "x86_64" else 16), rel=0.02)


def test_cloud_run_is_a_container_without_zip_limits():
    p = load_profile("gcp-cloud-run")
    s = p.serverless
    assert s.platform == "gcp-cloud-run" and s.max_zipped_mb is None and s.max_unzipped_mb is None
    assert s.vcpus_for(2048) == 1.0 and s.vcpus_for(8192) == 2.0 and s.vcpus_for(16384) == 4.0
    assert p.budgets.max_package_zipped_mb is None and p.budgets.max_package_unzipped_mb


@pytest.mark.parametrize("name", BOARDS + SERVERLESS)
def test_builtin_profile_files_pass_profiles_check(name):
    path = Path(P.__file__).resolve().parents[2] / "profiles" / f"{name}.yaml"
    if not path.is_file():
        pytest.skip("installed without the source tree")
    assert check_profile_file(path).name == name


# ------------------------------------------------------------------------------------------- identify


@pytest.fixture
def fake_machine(monkeypatch, tmp_path):
    """Pretend to be another machine: arch, /proc/cpuinfo, device-tree model, DMI product name, env."""
    for var in ("AWS_LAMBDA_FUNCTION_NAME", "AWS_EXECUTION_ENV", "K_SERVICE", "K_REVISION"):
        monkeypatch.delenv(var, raising=False)

    def make(arch: str, cpuinfo: str = "", model: str | None = None, dmi: str | None = None):
        monkeypatch.setattr(platform, "machine", lambda: arch)
        (tmp_path / "cpuinfo").write_text(textwrap.dedent(cpuinfo).lstrip(), encoding="utf-8")
        monkeypatch.setattr(H, "_CPUINFO", tmp_path / "cpuinfo")
        dt = tmp_path / "model"
        if model is not None:
            dt.write_bytes(model.encode() + b"\x00")
        monkeypatch.setattr(H, "_DEVICE_TREE_MODEL", dt if model is not None else tmp_path / "none")
        prod = tmp_path / "product_name"
        if dmi is not None:
            prod.write_text(dmi + "\n")
        monkeypatch.setattr(H, "_DMI_PRODUCT", prod if dmi is not None else tmp_path / "none")

    return make


PI5_CPUINFO = """
    processor	: 0
    Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
    CPU implementer	: 0x41
    CPU part	: 0xd0b
"""


def test_raspberry_pi_5_is_recognised_by_its_device_tree_model(fake_machine):
    fake_machine("aarch64", PI5_CPUINFO, model="Raspberry Pi 5 Model B Rev 1.0")
    assert H.machine_model() == "Raspberry Pi 5 Model B Rev 1.0; Cortex-A76"
    m = match_device(load_profile("raspberry-pi-5"))
    assert m.is_device and m.how == "identified" and m.host_arch == "arm64"
    other = match_device(load_profile("raspberry-pi-4"))
    assert not other.is_device and other.how == "not-identified" and "Raspberry Pi 5" in other.reason
    assert match_device(load_profile("cpu-arm64-neon")).how == "class"  # a class: measured on this CPU
    assert not match_device(load_profile("raspberry-pi-4")).is_device


def test_raspberry_pi_4_and_400(fake_machine):
    for model in ("Raspberry Pi 4 Model B Rev 1.4", "Raspberry Pi 400 Rev 1.0", "Raspberry Pi Compute Module 4 Rev 1.0"):
        fake_machine("aarch64", "CPU implementer : 0x41\nCPU part : 0xd08\n", model=model)
        assert match_device(load_profile("raspberry-pi-4")).is_device, model
        assert not match_device(load_profile("raspberry-pi-5")).is_device, model


def test_other_arch_is_never_the_device(fake_machine):
    fake_machine("x86_64", "model name : Raspberry Pi 5 impostor\n")  # the regex matches, the arch does not
    m = match_device(load_profile("raspberry-pi-5"))
    assert not m.is_device and m.how == "arch-mismatch" and "x86_64" in m.reason and "arm64" in m.reason


def test_jetson_and_graviton(fake_machine):
    fake_machine("aarch64", "CPU implementer : 0x41\nCPU part : 0xd42\n", model="NVIDIA Jetson Orin Nano Developer Kit")
    assert match_device(load_profile("jetson-orin-nano")).how == "identified"
    fake_machine("aarch64", "CPU implementer : 0x41\nCPU part : 0xd40\n", dmi="c7g.large")
    assert H.machine_model() == "c7g.large; Neoverse-V1"
    assert match_device(load_profile("cpu-arm64-graviton")).is_device
    assert not match_device(load_profile("aws-lambda-arm64")).is_device


def test_intel_nuc_by_dmi_product_name(fake_machine):
    fake_machine("x86_64", "model name : 12th Gen Intel(R) Core(TM) i5-1240P\nflags : avx2 fma\n", dmi="NUC12WSHi5")
    assert match_device(load_profile("intel-nuc")).is_device
    fake_machine("x86_64", "model name : 12th Gen Intel(R) Core(TM) i5-1240P\nflags : avx2 fma\n", dmi="XPS 13 9320")
    assert not match_device(load_profile("intel-nuc")).is_device  # same CPU, another machine


def test_serverless_platform_from_its_environment(fake_machine, monkeypatch):
    fake_machine("aarch64", "CPU implementer : 0x41\nCPU part : 0xd0c\n")
    assert not match_device(load_profile("aws-lambda-arm64")).is_device
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "classify")
    assert H.machine_model().startswith("AWS Lambda; ")
    assert match_device(load_profile("aws-lambda-arm64")).how == "identified"
    assert match_device(load_profile("aws-lambda-x86_64")).how == "arch-mismatch"
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME")
    fake_machine("x86_64", "model name : AMD EPYC 7B13\n")
    monkeypatch.setenv("K_SERVICE", "classify")
    monkeypatch.setenv("K_REVISION", "classify-00001")
    assert match_device(load_profile("gcp-cloud-run")).is_device


def test_host_always_matches_and_this_machine_is_no_board():
    host = load_profile("host")
    assert match_device(host).how == "host" and match_device(host).is_device
    here = H.host_arch()
    for name in BOARDS + SERVERLESS:
        m = match_device(load_profile(name))
        if m.is_device:  # only on the real device
            pytest.skip(f"this machine is {name}")
        assert m.how == ("not-identified" if load_profile(name).hardware.arch is here else "arch-mismatch")


def test_identify_must_be_a_regex(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("name: bad\nextends: raspberry-pi-5\nhardware: {identify: 'Raspberry Pi (5'}\n", encoding="utf-8")
    with pytest.raises(ProfileError, match=r"hardware -> identify: .*not a valid regular expression"):
        check_profile_file(f)
    f.write_text("name: bad\nextends: raspberry-pi-5\nhardware: {identify: ' '}\n", encoding="utf-8")
    with pytest.raises(ProfileError, match="empty regex"):
        check_profile_file(f)


def test_identify_can_be_overridden_and_cleared(tmp_path):
    f = tmp_path / "my-pi.yaml"
    f.write_text("name: my-pi\nextends: raspberry-pi-5\nhardware: {identify: null}\n", encoding="utf-8")
    assert check_profile_file(f).hardware.identify is None


def test_underscore_allowed_inside_names_only(tmp_path):
    f = tmp_path / "x.yaml"
    f.write_text("name: _hidden\nextends: cpu-x86-avx2\n", encoding="utf-8")
    with pytest.raises(ProfileError, match="name"):
        check_profile_file(f)
    f.write_text("name: edge_x86_64\nextends: cpu-x86-avx2\n", encoding="utf-8")
    assert check_profile_file(f).name == "edge_x86_64"


# ---------------------------------------------------------------------------------------------- peaks


@pytest.mark.parametrize("simd, info, expected", [
    (["avx2", "fma"], {}, (32, 2)),
    (["avx2", "fma", "avx_vnni"], {}, (32, 4)),
    (["avx2", "fma", "avx512f", "avx512_vnni"], {"vendor_id": "AuthenticAMD", "cpu family": "26"}, (64, 4)),
    (["avx2", "fma", "avx512f", "avx512_vnni"], {"vendor_id": "AuthenticAMD", "cpu family": "25"}, (32, 4)),
    (["avx2", "fma", "avx512f", "avx512_vnni"], {"vendor_id": "GenuineIntel", "model name": "Intel(R) Xeon(R) Gold 6338"}, (64, 4)),
    (["avx"], {}, (16, 1)),
])
def test_x86_flops_per_cycle(simd, info, expected):
    assert flops_per_cycle("x86_64", simd, info) == expected


@pytest.mark.parametrize("part, simd, expected", [
    ("0xd08", ["neon"], (8, 2)), ("0xd0b", ["neon", "dotprod"], (16, 4)), ("0xd40", ["neon", "dotprod"], (32, 4)),
    ("0xfff", ["neon"], (16, 2)),
])
def test_arm_flops_per_cycle(part, simd, expected):
    assert flops_per_cycle("arm64", simd, {"cpu part": part}) == expected


def test_derive_peaks():
    assert derive_peaks("arm64", ["neon", "dotprod"], 4, 2.4, {"cpu part": "0xd0b"}) == (153.6, 614.4)
    assert derive_peaks("x86_64", ["avx2", "fma"], 2, None) == (None, None)


def test_host_profile_carries_derived_peaks():
    hw = load_profile("host").hardware
    if hw.clock_ghz is None:
        pytest.skip("no CPU clock readable on this machine")
    per_cycle, mult = flops_per_cycle(hw.arch, hw.simd, H._read_cpuinfo())
    assert hw.peak_gflops_fp32 == pytest.approx(hw.cores * hw.clock_ghz * per_cycle, rel=0.01)
    assert hw.peak_gops_int8 == pytest.approx(hw.peak_gflops_fp32 * mult, rel=0.01)
    assert hw.identify is None
