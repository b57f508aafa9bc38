"""Any PyTorch module as a torch.export program: its input spec comes from the program, and it loads unpickled."""

from __future__ import annotations

import io

import pytest

from compress.errors import ModelLoadError

torch = pytest.importorskip("torch")


class TinyCNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.head = torch.nn.Linear(4, 10)

    def forward(self, pixel_values):
        x = torch.relu(self.bn(self.conv(pixel_values)))
        return self.head(x.mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def program_file(tmp_path_factory):
    model = TinyCNN().eval()
    batch = torch.export.Dim("batch", min=1, max=64)
    ep = torch.export.export(model, (torch.randn(2, 3, 8, 8),), dynamic_shapes={"pixel_values": {0: batch}})
    path = tmp_path_factory.mktemp("pt2") / "tiny.pt2"
    torch.export.save(ep, str(path))
    return path


def test_the_program_says_what_it_takes(program_file):
    from compress.teachers.programs import load_program, program_inputs, program_outputs

    ep = load_program(program_file)
    (x,) = program_inputs(ep)  # parameters and buffers are not inputs
    assert x.name == "pixel_values" and x.dtype == "float32"
    assert isinstance(x.shape[0], str) and x.shape[1:] == [3, 8, 8]  # the batch stays dynamic
    (y,) = program_outputs(ep)
    assert y.dtype == "float32" and y.shape[1:] == [10] and y.shape[0] == x.shape[0]
    out = ep.module()(torch.randn(5, 3, 8, 8))
    assert out.shape == (5, 10)


def test_unpickling_is_refused_unless_opted_in(tmp_path):
    from compress.teachers.programs import no_unpickling

    buf = io.BytesIO()
    torch.save({"w": torch.ones(2)}, buf)
    with no_unpickling("x.pt2"):
        buf.seek(0)
        assert torch.equal(torch.load(buf)["w"], torch.ones(2))  # plain tensors load
        buf.seek(0)
        with pytest.raises(ModelLoadError, match="only unpickling can load") as e:
            torch.load(buf, weights_only=False)  # what torch.export.load falls back to
    assert "--allow-pickle" in e.value.hint
    buf.seek(0)
    assert torch.load(buf, weights_only=False)["w"].shape == (2,)  # the guard is gone after the block


@pytest.mark.parametrize("content, match", [(None, "no such file"), (b"not a zip", "not a torch.export archive")])
def test_bad_files_are_one_line_errors(tmp_path, content, match):
    from compress.teachers.programs import load_program

    path = tmp_path / "m.pt2"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=match) as e:
        load_program(path)
    assert e.value.exit_code == 2 and e.value.hint
