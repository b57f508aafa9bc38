"""Image inputs: the ``image`` kind of input description (device-side feeds, numpy + Pillow) and image data sets."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from compress.artifact import ImagePreprocess, Manifest
from compress.data.images import load_image_dataset
from compress.device import feeds as device
from compress.errors import DataError
from tests.conftest import png_bytes

Image = pytest.importorskip("PIL.Image", reason="Pillow not installed (pip install 'edgecompress[images]')")


def picture(h: int = 12, w: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def save(path, arr) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


# --- feeds ---------------------------------------------------------------------------------------------------


def test_exact_resize_normalises_and_lays_out_nchw():
    spec = ImagePreprocess(size=[8, 8], mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25]).model_dump()
    feeds = device.make_feeds(".", spec, ["pixel_values"], 0)
    flat = np.full((20, 30, 3), 128, dtype=np.uint8)
    x = feeds.encode([flat, flat])["pixel_values"]
    assert x.shape == (2, 3, 8, 8) and x.dtype == np.float32
    np.testing.assert_allclose(x, (128 / 255 - 0.5) / 0.25, atol=1e-6)


def test_the_same_image_feeds_the_same_from_a_path_bytes_and_an_array(tmp_path):
    arr = picture()
    save(tmp_path / "a.png", arr)
    feeds = device.ImageFeeds(size=[10], resize="shortest_edge", crop=[8, 8], interpolation="bicubic")
    from_path = feeds.encode([tmp_path / "a.png"])["pixel_values"]
    from_bytes = feeds.encode([(tmp_path / "a.png").read_bytes()])["pixel_values"]
    from_array = feeds.encode([arr])["pixel_values"]
    assert from_path.shape == (1, 3, 8, 8)
    assert np.array_equal(from_path, from_bytes) and np.array_equal(from_path, from_array)


def test_resize_and_crop_follow_pillow_with_the_named_interpolation():
    arr = picture(12, 16)
    feeds = device.ImageFeeds(size=[6], resize="shortest_edge", crop=[6, 6], interpolation="nearest", rescale=1.0)
    got = feeds.encode([arr])["pixel_values"][0].transpose(1, 2, 0)
    want = np.asarray(Image.fromarray(arr).resize((8, 6), resample=Image.NEAREST), dtype=np.float32)[:, 1:7]
    assert np.array_equal(got, want)
    bilinear = device.ImageFeeds(size=[6], resize="shortest_edge", crop=[6, 6], interpolation="bilinear", rescale=1.0)
    assert not np.array_equal(got, bilinear.encode([arr])["pixel_values"][0].transpose(1, 2, 0))


def test_channel_order_grey_and_nhwc():
    arr = picture()
    rgb = device.ImageFeeds(size=[4, 4], layout="NHWC", rescale=1.0).encode([arr])["pixel_values"]
    bgr = device.ImageFeeds(size=[4, 4], layout="NHWC", rescale=1.0, channels="BGR").encode([arr])["pixel_values"]
    assert rgb.shape == (1, 4, 4, 3) and np.array_equal(rgb[..., ::-1], bgr)
    grey = device.ImageFeeds(size=[4, 4], channels="L", mean=[0.0], std=[1.0]).encode([arr])["pixel_values"]
    assert grey.shape == (1, 1, 4, 4)


def test_bad_descriptions_are_refused():
    with pytest.raises(ValueError, match="size must be 2"):
        ImagePreprocess(size=[8])
    with pytest.raises(ValueError, match="mean and std need 1"):
        ImagePreprocess(size=[8, 8], channels="L")
    with pytest.raises(ValueError, match="crop 9x9 is larger"):
        device.ImageFeeds(size=[8, 8], crop=[9, 9]).encode([picture()])
    with pytest.raises(ValueError, match="no text pairs"):
        device.ImageFeeds(size=[8, 8]).encode([picture()], ["a"])


def test_a_manifest_describes_image_inputs_as_a_second_kind_of_the_same_field(onnx_artifact):
    raw = json.loads((onnx_artifact.path / "manifest.json").read_text())
    raw["preprocess"] = {"kind": "image", "size": [8, 8], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    m = Manifest.model_validate(raw)
    assert isinstance(m.preprocess, ImagePreprocess) and m.preprocess.interpolation == "bilinear"
    feeds = device.make_feeds(onnx_artifact.path, m.preprocess.model_dump(), ["pixel_values"], m.max_length)
    assert feeds.encode([picture()])["pixel_values"].shape == (1, 3, 8, 8)


# --- data sets -----------------------------------------------------------------------------------------------


def test_a_folder_of_classes(tmp_path):
    for i, name in enumerate(["cat", "dog", "cat"]):
        save(tmp_path / "d" / name / f"{i}.png", picture(seed=i))
    ds = load_image_dataset(tmp_path / "d")
    assert len(ds) == 3 and ds.labels == [0, 0, 1] and ds.label_names == ["cat", "dog"]
    ds = load_image_dataset(tmp_path / "d", label2id={"dog": 0, "cat": 1})
    assert ds.labels == [1, 1, 0]
    with pytest.raises(DataError, match="class\\(es\\) cat are not among the model's labels \\(dog, bird\\)"):
        load_image_dataset(tmp_path / "d", label2id={"dog": 0, "bird": 1})


def test_a_table_of_paths_with_names_or_ids(tmp_path):
    save(tmp_path / "img" / "a.png", picture(seed=1))
    save(tmp_path / "img" / "b.jpg", picture(seed=2))
    (tmp_path / "t.csv").write_text("path,label\nimg/a.png,dog\nimg/b.jpg,cat\n")
    ds = load_image_dataset(tmp_path / "t.csv", label2id={"cat": 0, "dog": 1})
    assert ds.labels == [1, 0] and ds.items[0] == tmp_path / "img" / "a.png"
    (tmp_path / "t.jsonl").write_text('{"image": "img/a.png", "label": 3}\n{"image": "img/b.jpg", "label": 0}\n')
    assert load_image_dataset(tmp_path / "t.jsonl").labels == [3, 0]
    (tmp_path / "u.tsv").write_text("file\nimg/a.png\n")
    assert load_image_dataset(tmp_path / "u.tsv").labels is None
    with pytest.raises(DataError, match="have no labels"):
        load_image_dataset(tmp_path / "u.tsv", require_labels=True)


@pytest.mark.parametrize("content, match", [
    ("path,label\nimg/missing.png,0\n", "row 1: image .*missing.png does not exist"),
    ("path,label\nimg/fake.png,0\n", "row 1: .*fake.png is not a readable image"),
    ("name,label\na.png,0\n", "no path column \\(columns: name, label\\)"),
    ("path,label\nimg/a.png,0\n,1\n", "row 2: empty path"),
])
def test_bad_tables_name_the_row_and_the_fix(tmp_path, content, match):
    save(tmp_path / "img" / "a.png", picture())
    (tmp_path / "img" / "fake.png").write_text("not an image")
    (tmp_path / "t.csv").write_text(content)
    with pytest.raises(DataError, match=match) as e:
        load_image_dataset(tmp_path / "t.csv")
    assert e.value.hint and e.value.exit_code == 2


def test_arrays_in_an_npz(tmp_path):
    imgs = np.stack([picture(8, 8, seed=i) for i in range(4)])
    np.savez(tmp_path / "d.npz", images=imgs, labels=np.array([0, 1, 1, 0]))
    ds = load_image_dataset(tmp_path / "d.npz", label2id={"a": 0, "b": 1})
    assert len(ds) == 4 and ds.labels == [0, 1, 1, 0] and np.array_equal(ds.items[2], imgs[2])
    feeds = device.ImageFeeds(size=[4, 4])
    assert feeds.encode(ds.items)["pixel_values"].shape == (4, 3, 4, 4)
    with pytest.raises(DataError, match="label id\\(s\\) \\[1\\] are not among the model's"):
        load_image_dataset(tmp_path / "d.npz", label2id={"a": 0})


def test_pickled_npz_arrays_are_refused(tmp_path):
    ragged = np.empty(2, dtype=object)
    ragged[0], ragged[1] = picture(8, 8), picture(4, 4)
    np.savez(tmp_path / "d.npz", images=ragged)
    with pytest.raises(DataError, match="object arrays"):
        load_image_dataset(tmp_path / "d.npz")


def test_an_empty_folder_and_an_unknown_format(tmp_path):
    (tmp_path / "e" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match="no images in its class folders"):
        load_image_dataset(tmp_path / "e")
    (tmp_path / "x.bin").write_bytes(b"")
    with pytest.raises(DataError, match="not an image data set"):
        load_image_dataset(tmp_path / "x.bin")


def test_feeds_from_bytes_of_a_jpeg_match_decoding_it_with_pillow():
    buf = io.BytesIO()
    Image.fromarray(picture(9, 9)).save(buf, format="JPEG")
    decoded = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), dtype=np.float32)
    got = device.ImageFeeds(size=[9, 9], rescale=1.0, layout="NHWC").encode([buf.getvalue()])["pixel_values"][0]
    assert np.array_equal(got, decoded)


# --- a teacher's own processor, pinned and proven ------------------------------------------------------------


def _processors():
    """Slow (numpy + Pillow) Hugging Face image processors of the main families, built from configs (no hub). With
    torchvision installed, transformers 5's ``ViTImageProcessor`` is its torchvision backend; the Pillow one, which
    edgecompress loads (``use_fast=False``) and reproduces, is ``ViTImageProcessorPil``."""
    import transformers

    class PilFirst:
        def __getattr__(self, name):
            return getattr(transformers, name + "Pil", None) or getattr(transformers, name)

    tf = PilFirst()
    return {
        "vit": (tf.ViTImageProcessor, {"size": {"height": 12, "width": 12}, "resample": 2}),
        "deit": (tf.DeiTImageProcessor, {"size": {"height": 19, "width": 19}, "crop_size": {"height": 12, "width": 12},
                                         "resample": 3, "do_center_crop": True}),
        "convnext": (tf.ConvNextImageProcessor, {"size": {"shortest_edge": 14}, "crop_pct": 0.875, "resample": 3}),
        "bit": (tf.BitImageProcessor, {"size": {"shortest_edge": 15}, "crop_size": {"height": 12, "width": 12},
                                       "do_center_crop": True, "resample": 3}),
    }


@pytest.mark.parametrize("family", ["vit", "deit", "convnext", "bit"])
def test_our_preprocessing_matches_the_teachers_processor(family):
    from compress.teachers.image_processors import preprocess_from_hf, processor_agreement

    cls, cfg = _processors()[family]
    processor = cls(**cfg)
    spec = preprocess_from_hf(processor.to_dict())
    images = [picture(37, 23, seed=1), picture(20, 41, seed=2), picture(16, 16, seed=3)]  # odd margins on purpose
    agree = processor_agreement(processor, spec, images)
    assert agree["n"] == 3 and agree["max_abs_diff"] < 1e-5, (family, spec, agree)


def test_a_mismatch_shows_as_a_large_difference():
    from compress.teachers.image_processors import preprocess_from_hf, processor_agreement

    cls, cfg = _processors()["convnext"]
    processor = cls(**cfg)
    wrong = preprocess_from_hf(processor.to_dict()).model_copy(update={"interpolation": "nearest"})
    assert processor_agreement(processor, wrong, [picture(37, 23, seed=1)])["max_abs_diff"] > 0.1


def test_settings_we_cannot_reproduce_are_refused_by_name():
    from compress.errors import ConfigError
    from compress.teachers.image_processors import preprocess_from_hf

    with pytest.raises(ConfigError, match="sets do_pad"):
        preprocess_from_hf({"size": {"height": 8, "width": 8}, "do_pad": True})
    with pytest.raises(ConfigError, match="do_resize is false"):
        preprocess_from_hf({"do_resize": False})


@pytest.mark.parametrize("name, content, words", [
    ("bomb.png", lambda: png_bytes(60000, 60000, __import__("zlib").compress(b"\0" * 1000)), "larger than Pillow allows"),
    ("garbage.png", lambda: png_bytes(16, 16, b"\x78\x9c" + bytes(range(200))), "cannot be decoded"),
])
def test_a_decompression_bomb_or_undecodable_image_is_named(tmp_path, name, content, words):
    """A 60000x60000 PNG of 1 KB, and a PNG whose chunks and CRCs are valid but whose pixels do not inflate (it
    passes Image.verify()): a DataError naming the file, in a folder and in a table alike."""
    (tmp_path / "set" / "a").mkdir(parents=True)
    save(tmp_path / "set" / "a" / "ok.png", picture())
    (tmp_path / "set" / "a" / name).write_bytes(content())
    with pytest.raises(DataError, match=words) as e:
        load_image_dataset(tmp_path / "set")
    assert name in str(e.value)
    (tmp_path / "t.csv").write_text(f"path\nset/a/ok.png\nset/a/{name}\n")
    with pytest.raises(DataError, match=words):
        load_image_dataset(tmp_path / "t.csv")
