"""``validate --remote``: measuring over SSH against a real ``sshd`` on 127.0.0.1.

The module starts its own sshd (``/usr/sbin/sshd -D`` on a free port, with a host key, a client key,
``authorized_keys`` and a pid file in a temporary directory: tests/builders/sshd.py) and a client ``ssh_config`` passed with
``--ssh-config``: the host key is pinned in a temporary ``known_hosts`` and ``StrictHostKeyChecking``
stays on. ``SetEnv TMPDIR=...`` (accepted by the test sshd) gives the "device" its own $TMPDIR, so the
tests can check that no ``edgecompress.*`` work directory is left behind. Skipped with the reason when
sshd is not installed (``.ci/run`` installs openssh-server, so CI runs these for real).
"""

from __future__ import annotations

import ast
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import write_tsv

from compress.errors import IntegrityError
from compress.validation import remote, ssh
from tests.builders.cli import in_process
from tests.builders.profiles import GENEROUS_BUDGETS
from tests.builders.sshd import Loopback, running_sshd
from tests.builders.sshd import free_port as _free_port

pytestmark = pytest.mark.slow

FAST_MEASURE = {"warmup": 2, "min_runs": 10, "min_duration_s": 0.05, "eval_batch_size": 4}
GENEROUS = GENEROUS_BUDGETS


# --- the loopback sshd (tests/builders/sshd.py) -------------------------------------------------------------


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    with running_sshd(tmp_path_factory.mktemp("sshd")) as lb:
        yield lb


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("remote")


@pytest.fixture(scope="module")
def data_tsv(work) -> Path:
    return write_tsv(work / "data")


def write_profile(directory: Path, name: str, extends: str = "cpu-x86-avx2", budgets: dict | None = None,
                  **extra) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    data = {"name": name, "extends": extends, "measure": FAST_MEASURE, "budgets": budgets or GENEROUS, **extra}
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def profile(work) -> Path:
    """A profile for this machine's architecture (the loopback 'device' is this machine)."""
    import platform

    parent = "cpu-arm64-neon" if platform.machine().lower() in ("aarch64", "arm64") else "cpu-x86-avx2"
    return write_profile(work / "profiles", "loopback", parent)


def cli(capsys, *args) -> tuple[int, str, str]:
    """Run ``edgecompress -q ARGS`` in-process through the real entry point (one-line errors, exit codes)."""
    from compress.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["-q", *map(str, args)])
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def assert_one_line_error(code: int, err: str, *words: str) -> str:
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def remote_args(sshd: Loopback, *, config: Path | None = None, python: str | None = None, spec: str | None = None):
    return ["--remote", spec or sshd.spec, "--ssh-config", config or sshd.ssh_config(),
            "--remote-python", python or sys.executable]


# --- a remote run equals a local run ----------------------------------------------------------------------


def _capture_predictions(monkeypatch) -> list[np.ndarray]:
    """Record the artifact outputs both paths hand to the shared metric code (batch by batch: one array per run)."""
    from compress.device.shipped import concatenate_rows
    from compress.validation.metrics import Scores

    seen: list[np.ndarray] = []
    batches: dict[int, list[np.ndarray]] = {}
    update, result = Scores.update, Scores.result

    def spy_update(self, cand, labels=None, ref=None):
        batches.setdefault(id(self), []).append(np.array(cand))
        return update(self, cand, labels, ref)

    def spy_result(self):
        seen.append(concatenate_rows(batches.pop(id(self))))
        return result(self)

    monkeypatch.setattr(Scores, "update", spy_update)  # local validation and remote validation score through it
    monkeypatch.setattr(Scores, "result", spy_result)
    return seen


def test_remote_run_matches_local_run(sshd, int8_artifact, bert_classifier, data_tsv, profile, home, monkeypatch):
    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate

    seen = _capture_predictions(monkeypatch)
    base = {"profile": str(profile), "data": str(data_tsv), "teacher": str(bert_classifier)}
    local = validate(int8_artifact, ValidateConfig.from_flat(**base))
    rem = validate(int8_artifact, ValidateConfig.from_flat(**base, remote=sshd.spec, remote_python=sys.executable,
                                                 ssh_config=str(sshd.ssh_config())))
    assert len(seen) == 2
    np.testing.assert_allclose(seen[1], seen[0], rtol=0, atol=1e-5)
    for key in ("metric", "macro_f1", "teacher_metric", "agreement", "retention", "eval_samples"):
        assert rem.metrics[key] == local.metrics[key], key
    # the same budgets were judged, from numbers measured there
    assert [b.name for b in rem.budgets] == [b.name for b in local.budgets]
    assert rem.verdict == "pass"
    assert "speedup" in rem.metrics and rem.metrics["latency_ms"]["n"] >= FAST_MEASURE["min_runs"]
    assert rem.metrics["cold_start"]["torch_imported"] is False
    env = rem.environment
    assert local.environment["measured_on"] == "local"
    assert env["measured_on"].startswith(f"remote: {sshd.user}@127.0.0.1 (")
    assert socket.gethostname() in env["measured_on"] and env["runtime"]["version"] in env["measured_on"]
    assert env["runtime"]["runtime"] == "onnxruntime"
    assert env["remote"]["files_verified_on_device"] >= 5  # model, manifest, baseline x2, npz, runner
    assert env["measured_where"]["teacher_outputs"].startswith("controller")
    assert sshd.leftovers() == []


def test_a_token_classifier_remote_equals_local(sshd, ner_teacher, profile, home, tmp_path, monkeypatch):
    """Named entities over SSH: the device returns per-token scores (NaN-padded across batches), the controller reads
    each word's and scores entity F1 exactly as a local run does."""
    from conftest import NER_SENTENCES, NER_TAGS

    from compress.runtimes.torch_backend import TorchBackend
    from compress.stages.export import export
    from compress.tasks.entities import tags_of
    from compress.teachers.load import load_teacher
    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate

    scores = TorchBackend.from_teacher(load_teacher(ner_teacher)).predict_text(NER_SENTENCES)
    tags = tags_of(scores, NER_TAGS, [len(s) for s in NER_SENTENCES])
    data = tmp_path / "dev.txt"
    data.write_text("\n\n".join("\n".join(f"{w} {t}" for w, t in zip(words, ts, strict=True))
                                for words, ts in zip(NER_SENTENCES, tags, strict=True)) + "\n", encoding="utf-8")
    art = export(ner_teacher, tmp_path / "onnx")
    seen = _capture_predictions(monkeypatch)
    base = {"profile": str(profile), "data": str(data), "teacher": str(ner_teacher), "cold_start": False}
    local = validate(art, ValidateConfig.from_flat(**base))
    rem = validate(art, ValidateConfig.from_flat(**base, remote=sshd.spec, remote_python=sys.executable,
                                       ssh_config=str(sshd.ssh_config())))
    np.testing.assert_allclose(seen[1], seen[0], rtol=0, atol=1e-5)  # NaN where a sentence has no such word
    for key in ("metric_name", "metric", "teacher_metric", "agreement", "retention", "entities"):
        assert rem.metrics[key] == local.metrics[key], key
    assert local.metrics["metric"] == 1.0 and local.metrics["entities"] >= 10
    assert sshd.leftovers() == []


def test_a_detector_remote_equals_local(sshd, profile, home, tmp_path, monkeypatch):
    """A letterboxed detector over SSH: the device preprocesses (letterbox) and runs the graph, the controller decodes
    the boxes, suppresses and scores COCO mAP exactly as a local run does."""
    import json

    from compress.stages.export import export
    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate
    from tests.tasks.test_detection import _detector, _images, _own_boxes

    images = _images(tmp_path, 6)
    art = export(_detector(tmp_path), tmp_path / "fp32")
    data = tmp_path / "boxes.json"
    data.write_text(json.dumps(_own_boxes(art, images)))
    seen = _capture_predictions(monkeypatch)
    base = {"profile": str(profile), "data": str(data), "cold_start": False}
    local = validate(art, ValidateConfig.from_flat(**base))
    rem = validate(art, ValidateConfig.from_flat(**base, remote=sshd.spec, remote_python=sys.executable,
                                       ssh_config=str(sshd.ssh_config())))
    np.testing.assert_allclose(seen[1], seen[0], rtol=0, atol=1e-5)
    for key in ("metric_name", "metric", "map50", "teacher_metric", "agreement"):
        assert rem.metrics[key] == pytest.approx(local.metrics[key]), key
    assert local.metrics["metric"] > 0.95
    assert sshd.leftovers() == []


def test_cli_remote_run_reports_where_it_measured(sshd, int8_artifact, data_tsv, profile, home, tmp_path, capfd):
    """The CLI's validate --remote (in this process: the device side is a fresh interpreter over ssh anyway, and a
    local one cost an import of torch and transformers); the report says remote; nothing is left on the device."""
    out = tmp_path / "report"
    proc = in_process(capfd, "validate", int8_artifact.path, "--profile", profile, "--data", data_tsv,
                      "--remote", sshd.spec, "--remote-python", sys.executable, "--report-dir", out,
                      env={"EDGECOMPRESS_SSH_CONFIG": str(sshd.ssh_config())})
    assert proc.returncode == 0, proc.stderr
    assert "measured on remote:" in " ".join(proc.stdout.split())
    report = json.loads((out / "report.json").read_text())
    assert report["environment"]["measured_on"].startswith("remote: ")
    assert report["environment"]["remote"]["target"] == sshd.spec
    assert sshd.leftovers() == []


def test_profile_identify_is_checked_against_the_device(sshd, int8_artifact, work, profile, home):
    """A profile naming another board (same arch) still measures, with a warning in the report."""
    import platform

    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate

    parent = yaml.safe_load(profile.read_text())["extends"]
    cfg = {"baseline": False, "cold_start": False, "remote": sshd.spec, "remote_python": sys.executable,
           "ssh_config": str(sshd.ssh_config())}
    other = write_profile(work / "profiles", "some-other-board", parent, hardware={"identify": "Raspberry Pi 5"})
    rep = validate(int8_artifact, ValidateConfig.from_flat(profile=str(other), **cfg))
    assert rep.environment["device_match"]["how"] == "remote-not-identified"
    assert rep.environment["device_match"]["is_device"] is False
    assert any("does not match profile some-other-board's identify" in w for w in rep.warnings)
    cpu = rep.environment["remote"]["device"]["cpu"]
    this = write_profile(work / "profiles", "this-board", parent, hardware={"identify": re.escape(cpu)})
    rep = validate(int8_artifact, ValidateConfig.from_flat(profile=str(this), **cfg))
    dm = rep.environment["device_match"]
    assert (dm["is_device"], dm["how"], dm["host_arch"]) == (True, "remote-identified", platform.machine())
    assert dm["host_model"] == rep.environment["remote"]["device"]["model"]
    assert not any("identify" in w for w in rep.warnings)
    assert sshd.leftovers() == []


# --- bad input: one line, exit 2, nothing left behind --------------------------------------------------------


def test_connection_refused(sshd, int8_artifact, profile, capsys, home):
    spec = f"{sshd.user}@127.0.0.1:{_free_port()}"
    code, _, err = cli(capsys, "validate", int8_artifact.path, "--profile", profile, "--no-baseline",
                       *remote_args(sshd, spec=spec))
    assert_one_line_error(code, err, "cannot reach", "connection refused")


def test_unknown_host(sshd, int8_artifact, profile, capsys, home):
    code, _, err = cli(capsys, "validate", int8_artifact.path, "--profile", profile, "--no-baseline",
                       *remote_args(sshd, spec="nobody@no-such-host.invalid"))
    assert_one_line_error(code, err, "cannot reach", "unknown host")


@pytest.mark.parametrize("spec", ["-oProxyCommand=touch /tmp/x", "user@host:99999", "user@ho st", "user@host:"])
def test_bad_remote_spec(spec, int8_artifact, profile, capsys, home):
    code, _, err = cli(capsys, "validate", int8_artifact.path, "--profile", profile, "--remote", spec)
    assert_one_line_error(code, err, "--remote")


def test_wrong_key_is_an_auth_failure(sshd, int8_artifact, profile, capsys, home):
    config = sshd.ssh_config("ssh_config_wrong_key", key="wrong_key")
    code, _, err = cli(capsys, "validate", int8_artifact.path, "--profile", profile, "--no-baseline",
                       *remote_args(sshd, config=config))
    assert_one_line_error(code, err, "authentication", "failed", "key login")
    assert sshd.leftovers() == []


def test_host_key_checking_stays_on(sshd, int8_artifact, profile, capsys, home):
    """A known_hosts entry that does not match the server's key is refused (no prompt, no override)."""
    config = sshd.ssh_config("ssh_config_wrong_host_key", known_hosts="wrong_known_hosts")
    code, _, err = cli(capsys, "validate", int8_artifact.path, "--profile", profile, "--no-baseline",
                       *remote_args(sshd, config=config))
    assert_one_line_error(code, err, "host key", "not trusted")


def test_missing_runtime_on_the_device_names_the_pip_package(sshd, int8_artifact, profile, capsys, home, tmp_path):
    """A device Python with numpy but without onnxruntime (hidden by a shim on its PYTHONPATH)."""
    shim = tmp_path / "shim" / "onnxruntime"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError(\"No module named 'onnxruntime'\")\n")
    python = tmp_path / "python-without-ort"
    python.write_text(f"#!/bin/sh\nPYTHONPATH={shim.parent} exec {sys.executable} \"$@\"\n")
    python.chmod(0o755)
    code, _, err = cli(capsys, "validate", int8_artifact.path, "--profile", profile, "--no-baseline",
                       *remote_args(sshd, python=str(python)))
    assert_one_line_error(code, err, "onnxruntime", "pip install onnxruntime")
    assert sshd.leftovers() == []


def test_device_python_without_numpy(sshd, int8_artifact, profile, capsys, home):
    system = Path("/usr/bin/python3")
    if not system.is_file() or subprocess.run([str(system), "-c", "import numpy"], capture_output=True).returncode == 0:
        pytest.skip("needs a system python3 without numpy")
    code, _, err = cli(capsys, "validate", int8_artifact.path, "--profile", profile, "--no-baseline",
                       *remote_args(sshd, python=str(system)))
    assert_one_line_error(code, err, "numpy", "pip install numpy")


def test_no_python_on_the_device(sshd, int8_artifact, profile, capsys, home):
    code, _, err = cli(capsys, "validate", int8_artifact.path, "--profile", profile, "--no-baseline",
                       *remote_args(sshd, python="/nonexistent/python3"))
    assert_one_line_error(code, err, "no Python", "--remote-python")
    assert sshd.leftovers() == []


def test_profile_for_another_architecture(sshd, int8_artifact, work, capsys, home):
    import platform

    other = "cpu-x86-avx2" if platform.machine().lower() in ("aarch64", "arm64") else "cpu-arm64-neon"
    prof = write_profile(work / "profiles", "other-arch", other)
    code, _, err = cli(capsys, "validate", int8_artifact.path, "--profile", prof, "--no-baseline",
                       *remote_args(sshd))
    assert_one_line_error(code, err, "describes an", "device")
    assert sshd.leftovers() == []


def test_a_pytorch_speedup_baseline_is_refused_before_any_work(int8_artifact, work, capsys, home):
    """The remote runner runs the artifact's runtime only: timing the PyTorch teacher there cannot happen."""
    prof = write_profile(work / "profiles", "vs-pytorch", measure={**FAST_MEASURE, "speedup_baseline": "pytorch"},
                         budgets={**GENEROUS, "min_speedup": 2.0})
    code, _, err = cli(capsys, "validate", int8_artifact.path, "--profile", prof, "--remote", "pi@device")
    assert_one_line_error(code, err, "speedup_baseline: pytorch", "speedup_baseline: runtime")


def test_host_profile_is_refused(int8_artifact, capsys, home):
    code, _, err = cli(capsys, "validate", int8_artifact.path, "--profile", "host", "--remote", "pi@device")
    assert_one_line_error(code, err, "host", "device")


def test_full_remote_disk_is_refused_before_sending(sshd, int8_artifact, profile, capsys, home, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs as the device's full disk needs root")
    small = tmp_path / "small-disk"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        config = sshd.ssh_config("ssh_config_small_disk", tmpdir=small)
        code, _, err = cli(capsys, "validate", int8_artifact.path, "--profile", profile, "--no-baseline",
                           *remote_args(sshd, config=config))
        assert_one_line_error(code, err, "not enough free space", "MiB needed")
        assert sshd.leftovers(small) == []
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_interrupted_transfer_is_detected_on_the_device(sshd, int8_artifact, profile, capsys, home, monkeypatch):
    """A shipped file damaged after the transfer: the runner's sha256 check fails, the work dir goes."""
    damaged = []

    def corrupt(target, workdir):
        path = Path(workdir) / "artifact" / int8_artifact.manifest.model_file
        assert path.is_file()  # loopback: the device's files are on this machine
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size // 2)
        damaged.append(path)

    monkeypatch.setattr(remote, "_after_transfer", corrupt)
    code, _, err = cli(capsys, "validate", int8_artifact.path, "--profile", profile, "--no-baseline",
                       *remote_args(sshd))
    assert damaged
    line = assert_one_line_error(code, err, "interrupted or damaged", "artifact/model.onnx", "sha256")
    assert "retry" in line
    assert sshd.leftovers() == []


def test_interrupted_transfer_raises_an_integrity_error(sshd, int8_artifact, profile, home, monkeypatch):
    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate

    def corrupt(target, workdir):
        with open(Path(workdir) / "inputs.npz", "ab") as f:
            f.write(b"x")

    monkeypatch.setattr(remote, "_after_transfer", corrupt)
    with pytest.raises(IntegrityError, match="inputs.npz"):
        validate(int8_artifact, ValidateConfig.from_flat(profile=str(profile), baseline=False, cold_start=False,
                                               remote=sshd.spec, remote_python=sys.executable,
                                               ssh_config=str(sshd.ssh_config())))
    assert sshd.leftovers() == []


def test_ctrl_c_still_cleans_up(sshd, int8_artifact, profile, home, monkeypatch):
    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate

    def interrupt(target, workdir):
        assert Path(workdir).is_dir()
        raise KeyboardInterrupt

    monkeypatch.setattr(remote, "_after_transfer", interrupt)
    with pytest.raises(KeyboardInterrupt):
        validate(int8_artifact, ValidateConfig.from_flat(profile=str(profile), baseline=False, cold_start=False,
                                               remote=sshd.spec, remote_python=sys.executable,
                                               ssh_config=str(sshd.ssh_config())))
    assert sshd.leftovers() == []


# --- units: no sshd needed ------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec, expected", [
    ("pi@raspberrypi.local", ("pi", "raspberrypi.local", None)),
    ("pi@10.0.0.7:2222", ("pi", "10.0.0.7", 2222)),
    ("board", (None, "board", None)),
    ("root@[::1]:22", ("root", "::1", 22)),
])
def test_parse_remote(spec, expected):
    assert ssh.parse_remote(spec) == expected


def test_ssh_command_keeps_the_users_config():
    t = ssh.RemoteTarget(spec="pi@board", user="pi", host="board", port=None)
    cmd = t.ssh("true")
    assert cmd[0] == "ssh" and cmd[-3:] == ["--", "pi@board", "true"]
    options = [cmd[i + 1] for i, a in enumerate(cmd) if a == "-o"]
    assert sorted(o.split("=")[0] for o in options) == ["BatchMode", "ConnectTimeout"]
    assert "-p" not in cmd and "-F" not in cmd  # port and config come from ~/.ssh/config
    assert ssh.RemoteTarget(spec="x", user=None, host="x", port=None, python="~/venv/bin/python").python_word \
        == '"$HOME"/venv/bin/python'


@pytest.mark.parametrize("stderr, words", [
    ("ssh: connect to host 10.1.2.3 port 22: Connection timed out", ["cannot reach", "timed out"]),
    ("ssh: connect to host 10.1.2.3 port 22: No route to host", ["cannot reach", "no route"]),
    ("Host key verification failed.", ["host key", "not trusted"]),
    ("pi@board: Permission denied (publickey,password).", ["authentication", "failed"]),
    ("ssh: Could not resolve hostname board: Name or service not known", ["unknown host"]),
])
def test_ssh_failures_are_one_clear_line(stderr, words):
    t = ssh.RemoteTarget(spec="pi@board", user="pi", host="board", port=None)
    msg = str(ssh._ssh_failure(t, stderr, "checking the device"))
    assert "\n" not in msg
    for w in words:
        assert w in msg


def test_runner_is_standalone():
    """The runner imports only the standard library, numpy and the runtimes (and those lazily)."""
    tree = ast.parse(ssh.RUNNER.read_text(encoding="utf-8"))
    top = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            top |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            top.add(node.module.split(".")[0])
    third_party = top - set(sys.stdlib_module_names) - {"__future__"}
    # edgecompress_device, edgecompress_facts: the shared device code shipped beside it (compress.device.shipped and
    # compress.device.facts when run inside edgecompress)
    shipped = {"edgecompress_device", "edgecompress_facts"}
    assert third_party <= {"numpy", "onnxruntime", "openvino", "compress", *shipped}, third_party
    module_level = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    assert not module_level & {"numpy", "onnxruntime", "openvino", "compress", *shipped}
    for part in (ssh.DEVICE, ssh.DEVICE.parent / "facts.py"):
        device = ast.parse(part.read_text(encoding="utf-8"))
        used = {a.name.split(".")[0] for n in ast.walk(device) if isinstance(n, ast.Import) for a in n.names}
        assert used - set(sys.stdlib_module_names) <= {"numpy"}, (part.name, used)


def test_runner_refuses_openvino_on_an_unsupported_architecture(monkeypatch):
    from compress.device import remote_runner

    monkeypatch.setattr(remote_runner.platform, "machine", lambda: "riscv64")
    monkeypatch.setitem(sys.modules, "openvino", None)  # not importable there
    with pytest.raises(remote_runner.Fail) as exc:
        remote_runner.check_runtime("openvino", None, "openvino")
    assert exc.value.code == remote_runner.EXIT_ARCH
    assert "x86-64 and ARM64" in str(exc.value)
    with pytest.raises(remote_runner.Fail) as exc:
        remote_runner.check_runtime("tensorrt", None, "tensorrt")
    assert exc.value.code == remote_runner.EXIT_ARCH


def test_runner_check_mode_reports_the_device():
    proc = subprocess.run([sys.executable, str(ssh.RUNNER), "check", "--runtime", "onnxruntime"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout.strip().splitlines()[-1][len(ssh.MARKER):])
    assert res["ok"] and res["device"]["hostname"] == socket.gethostname()
    assert {"machine", "cpu", "cores", "python"} <= set(res["device"])


def test_remote_run_of_an_image_model_matches_local(sshd, work, profile, home):
    """An image artifact on the device: the controller preprocesses (numpy + Pillow), the device only runs arrays."""
    pytest.importorskip("PIL")
    pytest.importorskip("onnxscript")
    from compress.stages.export import export
    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate
    from tests.builders.images import write_image_set, write_program_teacher

    teacher = write_program_teacher(work / "img-teacher")
    data = write_image_set(work / "img-data") / "set"
    art = export(teacher, work / "img-onnx", force=True)
    base = {"profile": str(profile), "data": str(data), "teacher": str(teacher)}
    local = validate(art, ValidateConfig.from_flat(**base))
    rem = validate(art, ValidateConfig.from_flat(**base, remote=sshd.spec, remote_python=sys.executable,
                                       ssh_config=str(sshd.ssh_config())))
    for key in ("metric", "top5", "teacher_metric", "agreement", "eval_samples"):
        assert rem.metrics[key] == local.metrics[key], key
    assert rem.metrics["input_shape"] == {"batch_size": 1, "channels": 1, "height": 16, "width": 16}
    assert rem.environment["measured_on"].startswith("remote:")
    assert sshd.leftovers() == []


def test_remote_run_of_an_adopted_array_model_matches_local(sshd, work, profile, home):
    """An ONNX file made elsewhere, fed arrays: the controller stacks the samples, the device runs them, and the
    per-output fidelity against the file is computed here from the device's outputs."""
    from compress.stages.export import export
    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate
    from tests.builders.model_files import TwoInputs, torch_onnx_export

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    f = torch_onnx_export(TwoInputs(), (torch.randn(2, 6, 40), torch.randn(2, 24)), work / "two.onnx", ["window", "feats"],
                             {"window": {0: "batch"}, "feats": {0: "batch"}, "scores": {0: "batch"}})
    rng = np.random.default_rng(0)
    np.savez(work / "two.npz", window=rng.standard_normal((12, 6, 40)).astype(np.float32),
             feats=rng.standard_normal((12, 24)).astype(np.float32))
    art = export(f, work / "two-adopted", force=True)
    base = {"profile": str(profile), "data": str(work / "two.npz")}
    local = validate(art, ValidateConfig.from_flat(**base))
    rem = validate(art, ValidateConfig.from_flat(**base, remote=sshd.spec, remote_python=sys.executable,
                                       ssh_config=str(sshd.ssh_config())))
    assert rem.metrics["output_fidelity"] == local.metrics["output_fidelity"]
    assert rem.metrics["input_shape"] == {"batch_size": 1, "inputs": {"window": "6x40", "feats": "24"}}
    assert rem.environment["measured_on"].startswith("remote:") and sshd.leftovers() == []
