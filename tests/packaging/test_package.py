"""``edgecompress package``: the serverless bundle, its handler (no torch), sizes against the platform's limits,
cold start under the function's limits, exit codes, and a real ``pip download`` of manylinux aarch64 wheels.

Profiles are written into each test's temporary directory with the schema of the built-in serverless
profiles (``serverless:`` section), so the tests do not depend on which built-in profiles exist.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from compress.cli import cli
from compress.errors import OutputExistsError, Unverified
from compress.packaging.bundle import package
from compress.packaging.config import PackageConfig
from compress.packaging.report import report_paths
from tests.builders.bundles import DIRECT_DEPENDENCIES, run_handler, write_profile
from tests.builders.cli import in_process

pytestmark = pytest.mark.slow

TEXTS = ["a gripping, beautifully acted film.", "the plot is thin and the jokes fall flat."]


HANDLER_PROBE = """
    import json, sys
    import handler
    texts = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {texts!r}
    out = handler.handler({{"texts": texts}}, None)
    one = handler.handler({{"text": texts[0]}}, None)
    http = handler.handler({{"body": json.dumps({{"texts": texts}})}}, None)
    bad = handler.handler({{"body": json.dumps({{"nope": 1}})}}, None)
    try:
        handler.handler({{"texts": "not a list"}}, None)
        raised = False
    except ValueError:
        raised = True
    print(json.dumps({{"out": out, "one": one, "http": http, "bad": bad, "raised": raised,
                      "threads": handler.THREADS,
                      "modules": sorted(m for m in ("torch", "transformers", "compress", "optimum") if m in sys.modules)}}))
"""


@pytest.fixture(scope="module")
def encoder_artifact(bert_encoder, tmp_path_factory):
    """The tiny sentence-transformers encoder exported to ONNX (mean pooling + normalize in the manifest)."""
    from compress.stages.export import export

    return export(bert_encoder, tmp_path_factory.mktemp("artifacts") / "st-onnx")


@pytest.fixture(scope="module")
def offline_bundle(int8_artifact, tmp_path_factory):
    """A --no-download bundle of the tiny INT8 classifier, with one cold-start run, and its extracted copy."""
    d = tmp_path_factory.mktemp("pkg")
    prof = write_profile(d, memory_mb=1024)
    out = d / "bundle.zip"
    report = package(int8_artifact, out, PackageConfig(profile=str(prof), download=False, cold_start_runs=1))
    extracted = d / "extracted"
    with zipfile.ZipFile(out) as zf:
        zf.extractall(extracted)
    return out, report, extracted


# -- the bundle ------------------------------------------------------------------------------------


def test_no_download_bundle_has_handler_model_tokenizer_and_exact_pins(offline_bundle):
    from compress._optional import version_of

    out, report, _ = offline_bundle
    with zipfile.ZipFile(out) as zf:
        names = set(zf.namelist())
        reqs = zf.read("requirements.txt").decode()
        cfg = json.loads(zf.read("model_config.json"))
    for required in ("handler.py", "model_config.json", "requirements.txt", "model/model.onnx",
                     "model/tokenizer.json", "model/tokenizer_config.json", "model/manifest.json",
                     "edgecompress-bundle.json"):
        assert required in names, sorted(names)
    assert not any(n.startswith(("onnxruntime/", "numpy/", "tokenizers/")) for n in names)  # offline: no wheels
    pins = [ln for ln in reqs.splitlines() if ln and not ln.startswith("#")]
    assert sorted(p.split("==")[0] for p in pins) == sorted(DIRECT_DEPENDENCIES)
    for line in pins:
        name, sep, version = line.partition("==")
        assert sep == "==" and version == version_of(name).split("+")[0], line
    assert cfg["task"] == "text-classification" and cfg["labels"] == ["negative", "positive"]
    assert cfg["input_names"] and cfg["output_name"] == "logits" and cfg["model_file"] == "model/model.onnx"
    # 1024 MB -> 0.58 vCPU on Lambda -> one intra-op thread
    assert report.function["vcpus"] == pytest.approx(0.58) and cfg["threads"] == report.function["threads"] == 1


def test_no_download_sizes_are_not_measured_and_never_pass(offline_bundle):
    _, report, _ = offline_bundle
    sizes = [b for b in report.budgets if "zipped" in b.name]
    assert sizes and all(b.measured is None and not b.passed for b in sizes)
    assert all("--no-download" in b.note for b in sizes)
    assert report.verdict == "unverified"
    assert report.dependencies["measured"] is False and report.bundle["complete"] is False
    assert report.contributors[0].name == "model/model.onnx"


def test_bundle_is_reproducible(int8_artifact, tmp_path):
    prof = write_profile(tmp_path)
    cfg = PackageConfig(profile=str(prof), download=False, cold_start=False)
    a = package(int8_artifact, tmp_path / "a.zip", cfg)
    b = package(int8_artifact, tmp_path / "b.zip", cfg)
    assert a.bundle["sha256"] == b.bundle["sha256"]
    with zipfile.ZipFile(tmp_path / "a.zip") as zf:
        modes = {i.filename: (i.external_attr >> 16) & 0o777 for i in zf.infolist()}
    assert all(m & 0o444 == 0o444 for m in modes.values()), modes  # readable by the platform's function user


# -- the handler -----------------------------------------------------------------------------------


def test_handler_matches_the_ort_backend_and_imports_no_torch(offline_bundle, int8_artifact):
    from compress.runtimes.base import load_runtime

    _, _, extracted = offline_bundle
    got = run_handler(extracted, HANDLER_PROBE.format(texts=TEXTS))
    assert got["modules"] == [], got["modules"]

    backend = load_runtime(int8_artifact, "onnxruntime")
    logits = backend.predict_text(TEXTS)
    labels = [int8_artifact.manifest.labels[i] for i in logits.argmax(-1)]
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    preds = got["out"]["predictions"]
    assert [p["label"] for p in preds] == labels
    for p, row in zip(preds, probs):
        assert [p["scores"]["negative"], p["scores"]["positive"]] == pytest.approx(row.tolist(), abs=1e-5)
    # one text alone (no padding; dynamic INT8 ranges differ from the padded batch): same as the backend alone
    single = backend.predict_text(TEXTS[:1])[0]
    p1 = np.exp(single - single.max()) / np.exp(single - single.max()).sum()
    one = got["one"]["predictions"][0]
    assert one["label"] == int8_artifact.manifest.labels[int(single.argmax())]
    assert [one["scores"]["negative"], one["scores"]["positive"]] == pytest.approx(p1.tolist(), abs=1e-5)
    assert got["http"]["statusCode"] == 200 and json.loads(got["http"]["body"]) == got["out"]
    assert got["bad"]["statusCode"] == 400 and "texts" in json.loads(got["bad"]["body"])["error"]
    assert got["raised"] is True
    assert got["threads"] == 1


def test_handler_returns_pooled_normalized_embeddings(encoder_artifact, tmp_path):
    from compress.runtimes.base import load_runtime

    prof = write_profile(tmp_path)
    out = tmp_path / "st.zip"
    package(encoder_artifact, out, PackageConfig(profile=str(prof), download=False, cold_start=False))
    with zipfile.ZipFile(out) as zf:
        zf.extractall(tmp_path / "x")
    got = run_handler(tmp_path / "x", """
        import json, handler
        print(json.dumps(handler.handler({"texts": %r}, None)))
    """ % TEXTS)
    emb = np.asarray(got["embeddings"], dtype=np.float32)
    ref = load_runtime(encoder_artifact, "onnxruntime").predict_text(TEXTS)
    assert got["dimension"] == ref.shape[1]
    np.testing.assert_allclose(emb, ref, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_the_handler_of_a_token_classifier_returns_entities_with_offsets(ner_teacher, tmp_path):
    """The bundle's handler tags raw strings with the tokenizer's own words and returns each entity's type, text and
    character offsets; the tags are those the artifact gives the same words in edgecompress."""
    import zipfile

    from conftest import NER_SENTENCES, NER_TAGS

    from compress.runtimes.base import load_runtime
    from compress.stages.export import export
    from compress.tasks.entities import tags_of

    ner_onnx = export(ner_teacher, tmp_path / "ner-onnx")

    out = tmp_path / "ner.zip"
    package(ner_onnx, out, PackageConfig(profile=str(write_profile(tmp_path)), download=False, cold_start=False))
    with zipfile.ZipFile(out) as zf:
        zf.extractall(tmp_path / "x")
    texts = [" ".join(s) for s in NER_SENTENCES[:8]]
    got = run_handler(tmp_path / "x", """
        import json, handler
        print(json.dumps(handler.handler({"texts": %r}, None)))
    """ % texts)["entities"]
    assert len(got) == len(texts) and sum(map(len, got)) >= 3
    backend = load_runtime(ner_onnx, "onnxruntime")
    for text, ents, words in zip(texts, got, NER_SENTENCES[:8], strict=True):
        tags = tags_of(backend.predict_text([words]), NER_TAGS, [len(words)])[0]
        starts = [sum(len(w) + 1 for w in words[:i]) for i in range(len(words))]
        want = [(t[2:], starts[i]) for i, t in enumerate(tags) if t.startswith("B-")
                or (t.startswith("I-") and (i == 0 or tags[i - 1][2:] != t[2:]))]
        assert [(e["type"], e["start"]) for e in ents] == want
        for e in ents:
            assert text[e["start"]:e["end"]] == e["text"] and 0 < e["score"] <= 1


# -- cold start ------------------------------------------------------------------------------------


def test_cold_start_phases_under_the_function_limits(offline_bundle):
    _, report, _ = offline_bundle
    c = report.cold_start
    assert c and c["n"] == 1 and c["error"] is None
    med = c["median"]
    for phase in ("interpreter_start_ms", "imports_ms", "session_ms", "first_inference_ms", "total_ms", "peak_rss_mb"):
        assert med[phase] > 0, phase
    assert med["total_ms"] >= med["imports_ms"] + med["session_ms"] + med["first_inference_ms"]
    assert c["forbidden_imports"] == []
    assert {"numpy", "onnxruntime", "tokenizers"} <= set(c["imported_top_level"])
    assert c["dependencies"]["stand_in"] is True  # offline: this environment's packages stand in
    lim = c["limits"]
    assert len(lim["affinity"]) == 1 and c["runs"][0]["affinity"] == lim["affinity"]
    assert c["runs"][0]["threads_in_config"] == 1
    # 0.58 vCPU: a CFS quota where a cpu cgroup can be made, else an explicit note that affinity cannot do it
    assert lim["cpu_quota"] == pytest.approx(0.58) or "cannot be emulated" in lim.get("cpu_note", "")
    by_name = {b.name: b for b in report.budgets}
    assert by_name["function_memory_mb"].passed and by_name["function_memory_mb"].limit == 1024
    assert by_name["max_cold_start_ms"].measured == med["total_ms"]


# -- CLI -------------------------------------------------------------------------------------------


def test_cli_over_a_size_limit_fails_with_contributors_and_still_writes_the_zip(capfd, int8_artifact, tmp_path):
    prof = write_profile(tmp_path, max_zipped_mb=0.001)
    out = tmp_path / "bundle.zip"
    proc = in_process(capfd, "package", int8_artifact.path, "--profile", prof, "--out", out, "--no-download",
                      "--no-cold-start")
    assert proc.returncode == 1, proc.stderr
    assert "FAIL" in proc.stdout and "model/model.onnx" in proc.stdout and "biggest contributors" in proc.stdout
    assert "max_zipped_mb" in proc.stderr and "written anyway" in proc.stderr
    assert out.is_file()
    jpath, mpath, junit = report_paths(out)
    rep = json.loads(jpath.read_text())
    assert rep["verdict"] == "fail" and mpath.is_file()
    assert 'failures="1"' in junit.read_text() and "max_zipped_mb" in junit.read_text()
    failed = [b for b in rep["budgets"] if not b["passed"] and b["measured"] is not None]
    assert [b["name"] for b in failed] == ["aws-lambda: max_zipped_mb"]
    assert "without the dependencies" in failed[0]["note"]


def test_cli_relative_out_runs_the_cold_start(int8_artifact, tmp_path):
    """The README's form, a relative --out: the cold-start driver's path must not be joined twice."""
    prof = write_profile(tmp_path, memory_mb=1024)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("EDGECOMPRESS_DEBUG", None)
    proc = subprocess.run([sys.executable, "-m", "compress", "package", str(int8_artifact.path), "--profile", str(prof),
                           "--out", "bundle.zip", "--no-download", "--cold-start-runs", "1"],
                          capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert "failed in the cold-start run" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert zipfile.is_zipfile(tmp_path / "bundle.zip")
    rep = json.loads(report_paths(tmp_path / "bundle.zip")[0].read_text())
    assert rep["cold_start"]["n"] == 1 and rep["cold_start"]["error"] is None


def test_cli_existing_output_needs_force(capfd, int8_artifact, tmp_path):
    prof = write_profile(tmp_path)
    out = tmp_path / "bundle.zip"
    out.write_bytes(b"keep me")
    proc = in_process(capfd, "package", int8_artifact.path, "--profile", prof, "--out", out, "--no-download",
                      "--no-cold-start")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and "already exists" in proc.stderr and "--force" in proc.stderr
    assert out.read_bytes() == b"keep me"
    with pytest.raises(OutputExistsError):
        package(int8_artifact, out, PackageConfig(profile=str(prof), download=False, cold_start=False))
    res = CliRunner().invoke(cli, ["-q", "package", str(int8_artifact.path), "--profile", str(prof), "--out", str(out),
                                   "--no-download", "--no-cold-start", "--force", "--report-dir", str(tmp_path / "rep")])
    # unverified (sizes without the dependencies, no cold start): not a pass, UNVERIFIED's exit code 4, as validate
    assert isinstance(res.exception, Unverified) and res.exception.exit_code == 4, res.output
    assert "not judged for" in str(res.exception) and "none failed" in str(res.exception)
    assert zipfile.is_zipfile(out) and (tmp_path / "rep" / "report.json").is_file()
    assert 'failures="0"' in (tmp_path / "rep" / "junit.xml").read_text()


@pytest.mark.parametrize("args, words", [
    (("--profile", "cpu-x86-avx2"), ("no serverless", "aws-lambda-arm64")),
    (("--pin", "torch==2.0"), ("--pin", "torch", "onnxruntime")),
    (("--pin", "onnxruntime"), ("NAME==VERSION",)),
    (("--profile", "aws-lambda-arm64", "--memory-mb", "100000"), ("--memory-mb 100000", "above", "128–10240 MB")),
    (("--profile", "gcp-cloud-run", "--memory-mb", "64"), ("--memory-mb 64", "below", "128–32768 MB")),
])
def test_cli_bad_input_is_one_line_and_exit_2(capfd, int8_artifact, tmp_path, args, words):
    prof = write_profile(tmp_path)
    argv = ["package", int8_artifact.path, "--out", tmp_path / "b.zip", "--no-download", "--no-cold-start"]
    if "--profile" not in args:
        argv += ["--profile", prof]
    proc = in_process(capfd, *argv, *args)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    for w in words:
        assert w in proc.stderr, (w, proc.stderr)
    assert not (tmp_path / "b.zip").exists()


# -- real wheels for the target --------------------------------------------------------------------


def _pypi_reachable(tmp: Path) -> str | None:
    """None when pip can fetch from the index now; else why not (a quick, tiny download)."""
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest", str(tmp),
             "--retries", "0", "--timeout", "10", "--disable-pip-version-check", "six==1.17.0"],
            capture_output=True, text=True, timeout=60,
        )
    except subprocess.TimeoutExpired:
        return "pip download of a tiny package timed out"
    if proc.returncode != 0:
        return "the package index is unreachable: " + (proc.stderr.strip().splitlines() or ["?"])[-1]
    return None


def test_real_pip_download_of_manylinux_aarch64_wheels(int8_artifact, tmp_path):
    why = _pypi_reachable(tmp_path / "probe")
    if why:
        pytest.skip(why)
    prof = write_profile(tmp_path)
    out = tmp_path / "arm64.zip"
    report = package(int8_artifact, out, PackageConfig(profile=str(prof), cold_start=False))
    deps = report.dependencies
    assert deps["measured"] is True
    wheels = {w["name"]: w["file"] for w in deps["wheels"]}
    for name in DIRECT_DEPENDENCIES:
        assert name in wheels, wheels
        assert "aarch64" in wheels[name], wheels[name]
        assert "cp312" in wheels[name] or "abi3" in wheels[name], wheels[name]
    assert set(deps["pulled_in"]) == set(wheels) - set(DIRECT_DEPENDENCIES)
    with zipfile.ZipFile(out) as zf:
        names = zf.namelist()
        reqs = zf.read("requirements.txt").decode()
        so = next(n for n in names if n.startswith("onnxruntime/capi/onnxruntime_pybind11_state") and n.endswith(".so"))
        with zf.open(so) as f:
            head = f.read(20)
    assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == 183  # EM_AARCH64
    for name, version in deps["resolved"].items():
        assert f"{name}=={version}" in reqs
    # sizes are the real ones: the sum of the files, the zip on disk
    with zipfile.ZipFile(out) as zf:
        assert report.bundle["unzipped_bytes"] == sum(i.file_size for i in zf.infolist())
    assert report.bundle["zipped_bytes"] == out.stat().st_size
    by_name = {b.name: b for b in report.budgets}
    for key, limit in (("aws-lambda: max_zipped_mb", 50), ("aws-lambda: max_unzipped_mb", 250)):
        b = by_name[key]
        assert b.measured is not None and b.limit == limit and b.passed == (b.measured <= limit)
    top = [c.name for c in report.top_contributors(3)]
    assert "onnxruntime" in top and "numpy" in top
    assert sum(c.unzipped_bytes for c in report.contributors) == report.bundle["unzipped_bytes"]


def test_limits_without_cgroups_say_what_was_not_enforced(monkeypatch):
    import compress.packaging.coldstart as pkg

    monkeypatch.setattr(pkg, "_own_cgroups", lambda: {})
    with pkg._Limits(1024, 0.58, name="t") as lim:
        info = lim.describe()
    assert info["memory_limit_mb"] is None and "not enforced" in info["memory_note"]
    assert info["cpu_quota"] is None and "cannot be emulated by CPU affinity" in info["cpu_note"]
    assert len(info["affinity"]) == 1


def test_out_of_memory_under_the_function_limit_is_a_failure(int8_artifact, tmp_path):
    import compress.packaging.coldstart as pkg

    if "memory" not in pkg._own_cgroups():
        pytest.skip("no memory cgroup can be created here, so the memory limit is not enforced")
    prof = write_profile(tmp_path, memory_mb=24, memory_to_vcpu=[{"memory_mb": 128, "vcpus": 0.07}])
    report = package(int8_artifact, tmp_path / "b.zip", PackageConfig(profile=str(prof), download=False,
                                                                      cold_start_runs=1))
    if report.cold_start["limits"].get("memory_limit_mb") is None:
        pytest.skip("the memory cgroup could not be used")
    assert report.cold_start["oom"] is True and "memory limit" in report.cold_start["error"]
    mem = next(b for b in report.budgets if b.name == "function_memory_mb")
    assert mem.measured == 24 and not mem.passed
    assert report.verdict == "fail"


def test_device_code_has_one_source(offline_bundle):
    """The bundle handler and the remote runner ship the same device code (compress/device/shipped.py and facts.py),
    byte for byte, and neither carries its own pooling or session options."""
    from importlib import resources

    from compress.device.shipped import SHIPPED_FILES, SHIPPED_NAME
    from compress.validation.ssh import DEVICE

    _, _, extracted = offline_bundle
    assert (extracted / SHIPPED_NAME).read_bytes() == DEVICE.read_bytes()
    for name, source in SHIPPED_FILES.items():
        assert (extracted / name).read_bytes() == (resources.files("compress.device") / source).read_bytes()
    for shipped in (extracted / "handler.py", Path(__file__).resolve().parents[2] / "compress" / "device" / "remote_runner.py"):
        text = shipped.read_text()
        assert "GraphOptimizationLevel" not in text and "np.linalg.norm" not in text, shipped


def test_cli_reports_its_phases_without_a_terminal(int8_artifact, tmp_path, monkeypatch):
    """In a CI log (no terminal) package says what it is doing: model files, zip, then the cold-start runs counted."""
    from click.testing import CliRunner

    from compress.cli import cli
    from compress.cli._common import PhaseProgress

    monkeypatch.setattr(PhaseProgress, "delay", 0)  # the tiny fixture is quick: announce every phase
    prof = write_profile(tmp_path, memory_mb=1024)
    result = CliRunner().invoke(cli, ["package", str(int8_artifact.path), "--profile", str(prof),
                                      "--out", str(tmp_path / "b.zip"), "--no-download", "--cold-start-runs", "2"])
    # --no-download leaves the bundle's size UNVERIFIED: the command's main() turns that into exit 4
    assert result.exception is None or type(result.exception).__name__ == "Unverified", result.output
    err = result.stderr.splitlines()
    for line in ("writing the model and the handler ...", "zipping the bundle ...", "cold-start runs: 0/2 ...",
                 "cold-start runs: done in"):
        assert any(x.startswith(line) for x in err), (line, err)

