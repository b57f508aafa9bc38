"""How llama.cpp's converter is run for ``export --format gguf``: a subprocess started through ``import compress`` (the
torchvision shim the CLI's process has), with its own folder first on the path, and its failures reported by their
cause. A fake converter in a fake tree stands in for llama.cpp's (no llama.cpp or llama-cpp-python needed); the real
one runs in tests/stages/test_lm_gguf.py where a tree is given.

Issue 66: beside the timm extra (PyPI's torchvision with the CPU torch) the converter failed with ``Could not import
module 'LlamaConfig'`` and a hint blaming the architecture: the subprocess lacked the shim ``import compress``
installs, and the real error (``operator torchvision::nms does not exist``) was two exceptions up the chain."""

from __future__ import annotations

import importlib.util
import json
import textwrap

import pytest

from compress.errors import StageError
from compress.stages.export.lm.gguf import CONVERTER, convert, converter_error

#: a converter that imports what llama.cpp's does at its top (its ``conversion`` package from its folder; torch and
#: transformers' LlamaConfig, which import torchvision where it is installed) and records what it saw
FAKE = textwrap.dedent('''
    import json, sys
    from pathlib import Path
    import conversion
    seen = {"argv": sys.argv, "name": __name__, "file": __file__, "conversion": conversion.NAME,
            "shim": "compress" in sys.modules}
    if len(sys.argv) > 4 and sys.argv[-1].endswith("torchvision.gguf"):
        import torchvision  # what transformers' LlamaConfig pulls in beside the timm extra
        from transformers import LlamaConfig  # noqa: F401
        seen["torchvision"] = torchvision.__version__
    Path(sys.argv[sys.argv.index("--outfile") + 1]).write_text(json.dumps(seen))
''')

#: what the converter printed beside the timm extra before the fix (its last exceptions, trimmed)
CHAINED = textwrap.dedent('''
    INFO:hf-to-gguf:Set model tokenizer
    Traceback (most recent call last):
      File "conversion/base.py", line 2099, in _create_vocab_sentencepiece
    FileNotFoundError: File not found: /ckpt/tokenizer.model

    During handling of the above exception, another exception occurred:

    Traceback (most recent call last):
      File "torchvision/_meta_registrations.py", line 163, in <module>
    RuntimeError: operator torchvision::nms does not exist

    The above exception was the direct cause of the following exception:

    Traceback (most recent call last):
      File "convert_hf_to_gguf.py", line 600, in <module>
    ModuleNotFoundError: Could not import module 'LlamaConfig'. Are this object's requirements defined correctly?
''')


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "llama.cpp"
    (root / "conversion").mkdir(parents=True)
    (root / "conversion" / "__init__.py").write_text("NAME = 'the tree\\'s own conversion package'\n")
    (root / CONVERTER).write_text(FAKE)
    return root


def test_the_converter_runs_as_a_script_of_its_tree_with_the_shim_in_place(tree, tmp_path):
    out = tmp_path / "model.gguf"
    record = convert(tmp_path / "ckpt", out, outtype="f32", tree=tree)
    seen = json.loads(out.read_text())
    assert seen["name"] == "__main__" and seen["file"] == str(tree / CONVERTER)
    assert seen["argv"] == [str(tree / CONVERTER), str(tmp_path / "ckpt"), "--outtype", "f32", "--outfile", str(out)]
    assert seen["conversion"] == "the tree's own conversion package" and seen["shim"]
    assert record["converter"] == str(tree / CONVERTER) and record["outtype"] == "f32"


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is None or importlib.util.find_spec("torch") is None,
                    reason="torchvision is not installed (the timm extra brings it)")
def test_torchvision_and_llama_config_import_in_the_converter(tree, tmp_path):
    """Where torchvision is PyPI's beside the CPU torch (the timm extra), it imports only with the shim."""
    out = tmp_path / "torchvision.gguf"
    convert(tmp_path / "ckpt", out, tree=tree)
    assert json.loads(out.read_text())["torchvision"]


def test_an_import_failure_names_its_cause_and_does_not_blame_the_architecture(tree, tmp_path):
    assert converter_error(CHAINED, 1) == (
        "ModuleNotFoundError: Could not import module 'LlamaConfig'. Are this object's requirements defined correctly?",
        "RuntimeError: operator torchvision::nms does not exist")
    # raised while handling another error (not caused by it), or alone: no cause named
    assert converter_error("Traceback:\nValueError: x\n\nDuring handling of the above exception, another "
                           "exception occurred:\n\nModuleNotFoundError: No module named 'sentencepiece'", 1)[1] is None
    assert converter_error("", 3) == ("exit code 3", None)
    (tree / CONVERTER).write_text("import sys\nsys.stderr.write(" + repr(CHAINED) + ")\nsys.exit(1)\n")
    with pytest.raises(StageError) as e:
        convert(tmp_path / "ckpt", tmp_path / "model.gguf", tree=tree)
    assert "Could not import module 'LlamaConfig'" in str(e.value)
    assert "(caused by RuntimeError: operator torchvision::nms does not exist)" in str(e.value)
    assert "not the model's architecture" in e.value.hint and "supports the architectures" not in e.value.hint
