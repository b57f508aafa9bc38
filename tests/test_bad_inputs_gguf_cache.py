"""GGUF teachers and the cache (from issue 77): the checkpoint a ``.gguf`` dequantizes to
(compress.teachers.gguf_checkpoint) is held while a command reads it, made again from the recorded file when dropped
or damaged, and the lineage names the file given. The tests with a GGUF use a tiny random Llama's, written by the
repository's own route (llama.cpp's converter): they skip without llama-cpp-python, gguf and a llama.cpp source tree
(EDGECOMPRESS_LLAMA_CPP).

(``export FILE.gguf --opset 17`` refused before the file is read: tests/test_bad_inputs_options.py.)"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from compress.errors import ConfigError, ModelLoadError
from tests.builders.cli import ENV, assert_one_line_error, edgecompress

CACHE = "EDGECOMPRESS_CACHE_DIR"
CAP = "EDGECOMPRESS_CACHE_MB"


def _entry(root: Path, kind: str, name: str) -> Path:
    d = root / kind / name
    d.mkdir(parents=True)
    (d / "data.bin").write_bytes(b"\0" * 4096)
    return d


#: a process that leases a cache entry, says so, and waits to be killed
_HOLDER = ("import sys, time; from pathlib import Path; from compress import cache; cache.lease(Path(sys.argv[1])); "
           "print('held', flush=True); time.sleep(300)")


def test_an_entry_another_process_holds_is_not_evicted_and_a_dead_process_holds_nothing(tmp_path, monkeypatch):
    from compress import cache

    monkeypatch.setenv(CACHE, str(tmp_path))
    monkeypatch.setenv(CAP, "0")  # everything over the cap: only a lease keeps an entry
    held = _entry(tmp_path, "gguf-checkpoints", "aaaa")
    other = _entry(tmp_path, "baselines", "bbbb")
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(held)], stdout=subprocess.PIPE, text=True,
                            env={**ENV, CACHE: str(tmp_path)})
    try:
        assert proc.stdout.readline().strip() == "held"
        removed = cache.enforce_limit()
        assert other in removed and not other.exists()
        assert held.is_dir() and held not in removed  # another process reads it: kept, whatever the cap
    finally:
        proc.kill()
        proc.wait()
    assert cache.enforce_limit() == [held] and not held.exists()  # the holder died: its lease went with it


def test_a_folder_holding_only_a_gguf_names_the_file_to_pass(tmp_path):
    folder = tmp_path / "dl"
    folder.mkdir()
    (folder / "model.gguf").write_bytes(b"GGUF, not read")
    proc = edgecompress("export", "--format", "onnx", folder, "-o", tmp_path / "o",
                        env={**ENV, CACHE: str(tmp_path / "cache")})
    assert_one_line_error(proc, f"{folder} holds a .gguf (model.gguf)", f"pass the file itself: {folder / 'model.gguf'}")
    assert not (tmp_path / "o").exists() and not (tmp_path / "cache").exists()


# -- with a real (tiny) GGUF ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny Llama's FP32 GGUF and a second copy of it elsewhere (as a user is handed one, twice); the module's own
    cache."""
    pytest.importorskip("torch")
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install 'edgecompress[llamacpp]')")
    pytest.importorskip("gguf", reason="the gguf package is not installed (pip install 'edgecompress[llamacpp]')")
    from compress.stages.export.lm.gguf import ENV as TREE
    from compress.stages.export.lm.gguf import llama_cpp_tree

    if llama_cpp_tree() is None:
        pytest.skip(f"no llama.cpp source tree for the converter: set {TREE}")
    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig
    from tests.builders.lm import STORY, tiny_causal_lm

    root = tmp_path_factory.mktemp("gguf-77")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CACHE, str(root / "cache"))
        made = export(tiny_causal_lm(root / "ckpt"), root / "fp32", ExportConfig(format="gguf"))
        (root / "first").mkdir()
        (root / "second").mkdir()
        first = shutil.copy2(made.path / "model.gguf", root / "first" / "tiny.gguf")
        shutil.copy2(first, root / "pristine.gguf")  # what a test that rewrites a copy puts back
        text = root / "story.txt"
        text.write_text("\n\n".join([STORY] * 4), encoding="utf-8")
        yield {"root": root, "first": first, "second": shutil.copy2(first, root / "second" / "tiny.gguf"),
               "text": text}


@pytest.fixture(scope="module")
def exported(files):
    """The second copy exported to ONNX after the first was dequantized into the cache (an earlier export of it)."""
    from tests.builders.lm import genai_builder_missing

    if genai_builder_missing():
        pytest.skip(genai_builder_missing())
    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig
    from compress.teachers.gguf_checkpoint import gguf_checkpoint

    gguf_checkpoint(files["first"])
    return export(files["second"], files["root"] / "onnx", ExportConfig(format="onnx"))


def _checkpoint(art) -> Path:
    """The cache entry ``art`` was exported from, made again where a test before dropped it."""
    from compress.teachers.gguf_checkpoint import gguf_checkpoint

    return gguf_checkpoint(art.manifest.source.origin["path"])


def _validate(art, fast_host: str, text: Path):
    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate

    return validate(art.path, ValidateConfig.from_flat(profile=fast_host, data=str(text), prompt_tokens=16,
                                                       new_tokens=4, window=32, limit=2, cold_start=False))


def test_a_second_copy_s_lineage_names_the_copy_given(files, exported):
    origin = exported.manifest.source.origin
    assert origin["path"] == str(Path(files["second"]).resolve())  # not the first copy the cache was made from
    assert origin["sha256"] == _sha(files["first"])


def _sha(path) -> str:
    from compress.device.facts import sha256_file

    return sha256_file(path)


def test_a_cap_smaller_than_the_checkpoint_is_said_before_the_work_and_the_checkpoint_kept(files, tmp_path,
                                                                                           monkeypatch, caplog):
    from compress.teachers import gguf_checkpoint as module

    monkeypatch.setenv(CACHE, str(tmp_path / "cache"))
    monkeypatch.setenv(CAP, "0.1")  # 100 KiB: the tiny checkpoint is about 430 kB
    said_before: list[bool] = []
    real = module._write

    def write(*args):
        said_before.append(any(CAP in r.getMessage() for r in caplog.records))
        return real(*args)

    monkeypatch.setattr(module, "_write", write)
    with caplog.at_level("WARNING", logger="compress"):
        folder = module.gguf_checkpoint(files["first"])
    lines = [r.getMessage() for r in caplog.records if CAP in r.getMessage()]
    assert said_before == [True] and len(lines) == 1
    assert f"{CAP}=0.1 MB" in lines[0] and f"set {CAP}=1024" in lines[0]
    assert (folder / "model.safetensors").is_file()  # kept: the command that made it goes on with it
    evict = subprocess.run([sys.executable, "-c", "from compress import cache; cache.enforce_limit()"],
                           env={**ENV, CACHE: str(tmp_path / "cache"), CAP: "0.1"}, capture_output=True, text=True)
    assert evict.returncode == 0, evict.stderr
    assert (folder / "model.safetensors").is_file()  # another command's write keeps it while this one holds it


def test_a_checkpoint_removed_while_the_export_reads_it_is_named_not_sent_to_the_hub(files, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime_genai")
    import compress.stages.export.lm.onnx as route
    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig

    monkeypatch.setenv(CACHE, str(tmp_path / "cache"))
    real = route.check_builder_takes

    def removed_meanwhile(source, cfg):  # the entry removed (by hand) once the builder's checks have read it
        shutil.rmtree(source)
        return real(source, cfg)

    monkeypatch.setattr(route, "check_builder_takes", removed_meanwhile)
    with pytest.raises(ModelLoadError) as e:  # was: exit 3, "Repo id must be in the form 'repo_name' ..."
        export(files["first"], tmp_path / "out", ExportConfig(format="onnx"))
    said = str(e.value)
    assert "tiny.gguf dequantized to was removed while the export read it" in said and "run the export again" in said
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_validate_makes_a_cut_checkpoint_again_from_the_recorded_file(files, exported, fast_host):
    folder = _checkpoint(exported)
    weights = folder / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    report = _validate(exported, fast_host, files["text"])
    assert "as transformers' GGUF loader dequantizes it" in report.metrics["generation"]["reference"]
    assert not any("no teacher" in w for w in report.warnings)
    from compress.teachers.gguf_checkpoint import checkpoint_damage

    assert checkpoint_damage(folder) is None  # whole again
    assert not any(folder.parent.glob(".*"))  # nothing put aside left behind


def test_a_cut_checkpoint_whose_file_is_gone_names_the_cache_entry_to_delete(files, exported, fast_host, tmp_path):
    folder = _checkpoint(exported)
    weights = folder / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    given = Path(exported.manifest.source.origin["path"])
    given.rename(tmp_path / "away.gguf")
    try:
        with pytest.raises(ModelLoadError) as e:
            _validate(exported, fast_host, files["text"])
    finally:
        (tmp_path / "away.gguf").rename(given)
        shutil.rmtree(folder)
    said = str(e.value)
    assert f"{folder}: the checkpoint tiny.gguf dequantized to is damaged (model.safetensors: corrupt or truncated" \
           in said and f"delete {folder}" in said and "not on this machine" in said


def test_validate_says_the_gguf_changed_since_the_export(files, exported, fast_host):
    shutil.rmtree(_checkpoint(exported))
    given = Path(exported.manifest.source.origin["path"])
    with open(given, "ab") as f:
        f.write(b"\0" * 64)  # rewritten: its sha256 is no longer the lineage's
    try:
        report = _validate(exported, fast_host, files["text"])
    finally:
        shutil.copy2(files["root"] / "pristine.gguf", given)
    said = [w for w in report.warnings if w.startswith("no teacher")]
    assert len(said) == 1 and f"{given} changed since it was exported (its sha256 is" in said[0], report.warnings
    assert "not on this machine" not in said[0]


def test_qat_makes_a_dropped_checkpoint_again_and_takes_the_gguf_as_its_source(files, exported, tmp_path):
    from compress.stages.quantize.config import QuantizeConfig
    from compress.stages.quantize.qad import trainable_source
    from compress.teachers.lm_config import gguf_origin

    def source(**given):
        return trainable_source(exported, QuantizeConfig.from_flat(precision="int4", qat_steps=1,
                                                                   qat_data=str(files["text"]), **given))

    shutil.rmtree(_checkpoint(exported))
    made = source()  # dropped by the cache: made again from the recorded file, as validate does
    assert (made / "model.safetensors").is_file() and gguf_origin(made)["sha256"] == _sha(files["second"])
    shutil.rmtree(made)
    assert source(qat_source=str(files["first"])) == made  # the other copy: the same content, dequantized alike
    other = shutil.copy2(files["first"], tmp_path / "other.gguf")
    with open(other, "ab") as f:
        f.write(b"\0" * 64)
    with pytest.raises(ConfigError, match="--qat-source other.gguf is not the .gguf .* was exported from"):
        source(qat_source=str(other))
