"""compress.data.tables: every format, column detection, label mapping, every bad-input error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from compress.data.tables import TextDataset, load_dataset, sample_data_path
from compress.errors import ConfigError, DataError, MissingBackendError

ROOT = Path(__file__).resolve().parents[2]
LABEL2ID = {"negative": 0, "positive": 1}


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def jsonl(path: Path, rows: list[dict]) -> Path:
    return write(path, "".join(json.dumps(r) + "\n" for r in rows))


# --- formats --------------------------------------------------------------------------------------


def test_tsv_keeps_quote_characters(tmp_path):
    f = write(tmp_path / "d.tsv", 'sentence\tlabel\nit\'s a "so-called" twist\t0\n"quoted start\t1\n')
    ds = load_dataset(f)
    assert ds.texts == ['it\'s a "so-called" twist', '"quoted start']
    assert ds.labels == [0, 1]
    assert (ds.text_column, ds.label_column, ds.pairs) == ("sentence", "label", None)
    assert ds.source == str(f)


def test_csv_uses_normal_quoting(tmp_path):
    f = write(tmp_path / "d.csv", 'text,label\n"good, really good",1\n"a ""quoted"" word",0\nplain,1\n')
    ds = load_dataset(f)
    assert ds.texts == ["good, really good", 'a "quoted" word', "plain"]
    assert ds.labels == [1, 0, 1]


def test_csv_crlf_bom_and_blank_lines(tmp_path):
    f = write(tmp_path / "d.csv", "\ufefftext,label\r\nfine,1\r\n\r\nalso fine,0\r\n")
    ds = load_dataset(f)
    assert ds.texts == ["fine", "also fine"]
    assert ds.labels == [1, 0]


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_json_lines(tmp_path, suffix):
    f = jsonl(tmp_path / f"d{suffix}", [{"text": "a b c", "label": 1}, {"text": "d e f", "label": 0}])
    ds = load_dataset(f)
    assert ds.texts == ["a b c", "d e f"] and ds.labels == [1, 0]


def test_json_array(tmp_path):
    f = write(tmp_path / "d.json", json.dumps([{"review": "nice", "target": "positive"}]))
    ds = load_dataset(f, label2id=LABEL2ID)
    assert (ds.texts, ds.labels, ds.text_column, ds.label_column) == (["nice"], [1], "review", "target")


def test_parquet(tmp_path):
    pd = pytest.importorskip("pandas", reason="pandas not installed (pip install 'edgecompress[data]')")
    pytest.importorskip("pyarrow", reason="pyarrow not installed (pip install 'edgecompress[data]')")
    f = tmp_path / "d.parquet"
    pd.DataFrame({"sentence": ["x y", "z w", "v u"], "label": [0, 1, 1], "extra": [1.0, 2.0, 3.0]}).to_parquet(f)
    ds = load_dataset(f)
    assert ds.texts == ["x y", "z w", "v u"] and ds.labels == [0, 1, 1]
    assert load_dataset(f, limit=2).texts == ["x y", "z w"]


def test_parquet_through_pandas_when_pyarrow_api_is_unavailable(tmp_path, monkeypatch):
    pd = pytest.importorskip("pandas", reason="pandas not installed")
    pytest.importorskip("pyarrow", reason="pandas needs a Parquet engine to write the fixture")
    import compress.data.readers as data

    f = tmp_path / "d.parquet"
    pd.DataFrame({"text": ["a", "b"], "label": ["positive", "negative"]}).to_parquet(f)
    monkeypatch.setattr(data, "is_available", lambda name: name != "pyarrow")
    ds = load_dataset(f, label2id=LABEL2ID)
    assert ds.texts == ["a", "b"] and ds.labels == [1, 0]


def test_parquet_without_backends_is_a_missing_backend_error(tmp_path, monkeypatch):
    import compress.data.readers as data

    f = write(tmp_path / "d.parquet", "PAR1")
    monkeypatch.setattr(data, "is_available", lambda name: False)
    monkeypatch.setattr("compress._optional.is_available", lambda name: False)
    with pytest.raises(MissingBackendError, match="Parquet") as e:
        load_dataset(f)
    assert "pip install" in e.value.hint


def test_corrupt_parquet(tmp_path):
    pytest.importorskip("pyarrow", reason="pyarrow not installed")
    f = write(tmp_path / "d.parquet", "this is not parquet at all")
    with pytest.raises(DataError, match="Parquet"):
        load_dataset(f)


@pytest.fixture
def hf():
    return pytest.importorskip("datasets", reason="datasets not installed (pip install 'edgecompress[data]')")


def test_saved_dataset_directory(tmp_path, hf):
    d = tmp_path / "saved"
    hf.Dataset.from_dict({"sentence": ["a", "b", "c"], "label": [0, 1, 0], "idx": [0, 1, 2]}).save_to_disk(str(d))
    ds = load_dataset(d)
    assert ds.texts == ["a", "b", "c"] and ds.labels == [0, 1, 0]
    assert load_dataset(d, limit=1).texts == ["a"]


def test_saved_dataset_dict_split_order_and_syntax(tmp_path, hf):
    d = tmp_path / "dd"
    hf.DatasetDict(
        {
            "train": hf.Dataset.from_dict({"text": ["t1", "t2"], "label": [0, 1]}),
            "test": hf.Dataset.from_dict({"text": ["x1"], "label": [-1]}),
            "validation": hf.Dataset.from_dict({"text": ["v1", "v2"], "label": [1, 0]}),
        }
    ).save_to_disk(str(d))
    assert load_dataset(d).texts == ["v1", "v2"]  # validation first
    assert load_dataset(f"{d}::train").texts == ["t1", "t2"]
    # the test split is unlabelled (-1): fine for texts only, an error when labels are required
    unlabelled = load_dataset(f"{d}::test")
    assert unlabelled.labels is None and unlabelled.label_column is None
    with pytest.raises(DataError, match="holds no labels") as e:
        load_dataset(f"{d}::test", require_labels=True)
    assert "validation" in e.value.hint
    with pytest.raises(DataError, match="no split 'dev'") as e:
        load_dataset(f"{d}::dev")
    assert "train" in str(e.value) and "validation" in str(e.value)


def test_saved_dataset_dict_without_known_split(tmp_path, hf):
    d = tmp_path / "dd"
    hf.DatasetDict({"alpha": hf.Dataset.from_dict({"text": ["a"]})}).save_to_disk(str(d))
    with pytest.raises(DataError, match="alpha") as e:
        load_dataset(d)
    assert "::" in e.value.hint
    assert load_dataset(f"{d}::alpha").texts == ["a"]


def test_split_syntax_on_plain_dataset_or_file(tmp_path, hf):
    d = tmp_path / "saved"
    hf.Dataset.from_dict({"text": ["a"]}).save_to_disk(str(d))
    with pytest.raises(DataError, match="not a DatasetDict"):
        load_dataset(f"{d}::validation")
    f = write(tmp_path / "d.tsv", "text\ta\n")
    with pytest.raises(DataError, match="is a file"):
        load_dataset(f"{f}::validation")


def test_saved_dataset_class_label_ids(tmp_path, hf):
    d = tmp_path / "saved"
    features = hf.Features({"text": hf.Value("string"), "label": hf.ClassLabel(names=["neg", "pos"])})
    hf.Dataset.from_dict({"text": ["a", "b"], "label": [1, 0]}, features=features).save_to_disk(str(d))
    assert load_dataset(d, num_labels=2).labels == [1, 0]


# --- columns --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "text", "pair", "label"),
    [
        (["content", "class"], "content", None, "class"),
        (["id", "review", "labels"], "review", None, "labels"),
        (["sentence1", "sentence2", "label"], "sentence1", "sentence2", "label"),
        (["question", "question2", "label"], "question", "question2", "label"),
        (["question", "sentence", "label"], "question", "sentence", "label"),  # QNLI order
        (["question1", "question2", "label"], "question1", "question2", "label"),  # QQP
        (["text", "text_pair"], "text", "text_pair", None),
        (["Text", "Label"], "Text", None, "Label"),  # case-insensitive fallback
        (["sentence", "idx"], "sentence", None, None),
    ],
)
def test_column_auto_detection(tmp_path, header, text, pair, label):
    values = {"label": "1", "labels": "1", "class": "1", "Label": "1", "id": "7", "idx": "7"}
    row = [values.get(h, f"words for {h}") for h in header]
    f = write(tmp_path / "d.tsv", "\t".join(header) + "\n" + "\t".join(row) + "\n")
    ds = load_dataset(f)
    assert (ds.text_column, ds.text_pair_column, ds.label_column) == (text, pair, label)
    assert ds.texts == [f"words for {text}"]
    assert ds.pairs == (None if pair is None else [f"words for {pair}"])
    assert ds.labels == (None if label is None else [1])


def test_explicit_columns(tmp_path):
    f = jsonl(tmp_path / "d.jsonl", [{"a": "first", "b": "second", "y": 1, "text": "ignored", "label": 0}])
    ds = load_dataset(f, text_column="a", text_pair_column="b", label_column="y")
    assert (ds.texts, ds.pairs, ds.labels) == (["first"], ["second"], [1])
    assert (ds.text_column, ds.text_pair_column, ds.label_column) == ("a", "b", "y")


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"text_column": "body"}, "--text-column"),
        ({"text_pair_column": "other"}, "--text-pair-column"),
        ({"label_column": "gold"}, "--label-column"),
    ],
)
def test_explicit_column_missing_lists_available(tmp_path, kwargs, option):
    f = write(tmp_path / "d.csv", "text,label\nhi,1\n")
    with pytest.raises(DataError) as e:
        load_dataset(f, **kwargs)
    name = next(iter(kwargs.values()))
    assert repr(name) in e.value.message and "text, label" in e.value.message
    assert option in e.value.hint


def test_explicit_column_case_suggestion(tmp_path):
    f = write(tmp_path / "d.csv", "Sentence,label\nhi,1\n")
    with pytest.raises(DataError) as e:
        load_dataset(f, text_column="sentence_x")
    assert "Sentence" in str(e.value)
    with pytest.raises(DataError, match="did you mean 'Sentence'"):
        load_dataset(f, text_column="SENTENCE")


def test_no_text_column(tmp_path):
    f = write(tmp_path / "d.csv", "body,label\nhi,1\n")
    with pytest.raises(DataError, match="no text column") as e:
        load_dataset(f)
    assert "body" in e.value.message and "--text-column" in e.value.hint


# --- labels ---------------------------------------------------------------------------------------


def test_label_names_mapped_case_sensitive_then_insensitive(tmp_path):
    f = write(tmp_path / "d.tsv", "text\tlabel\na\tpositive\nb\tNEGATIVE\nc\tPositive\n")
    assert load_dataset(f, label2id=LABEL2ID).labels == [1, 0, 1]
    # an exact match wins over a case-insensitive one
    assert load_dataset(f, label2id={"positive": 0, "Positive": 1, "negative": 2}).labels == [0, 2, 1]


def test_label_ids_ints_and_digit_strings(tmp_path):
    rows = [{"text": "a", "label": 2}, {"text": "b", "label": "1"}, {"text": "c", "label": 0.0}]
    f = jsonl(tmp_path / "d.jsonl", rows)
    assert load_dataset(f, num_labels=3).labels == [2, 1, 0]
    assert load_dataset(f).labels == [2, 1, 0]  # no range known: ids are taken as they are


def test_label_id_out_of_range_names_row(tmp_path):
    f = write(tmp_path / "d.tsv", "text\tlabel\na\t0\nb\t2\n")
    with pytest.raises(DataError) as e:
        load_dataset(f, num_labels=2)
    msg = e.value.message
    assert "row 2" in msg and "line 3" in msg and "2" in msg and "0..1" in msg
    # the range also follows from label2id when num_labels is not given
    with pytest.raises(DataError, match="out of range"):
        load_dataset(f, label2id=LABEL2ID)


def test_negative_label_id_is_an_error(tmp_path):
    f = write(tmp_path / "d.tsv", "text\tlabel\na\t1\nb\t-1\n")
    with pytest.raises(DataError, match=r"row 2.*-1.*unlabelled"):
        load_dataset(f, num_labels=2)


def test_unknown_label_name_names_label_row_and_known_labels(tmp_path):
    f = write(tmp_path / "d.csv", "text,label\na,positive\nb,neutral\n")
    with pytest.raises(DataError) as e:
        load_dataset(f, label2id=LABEL2ID)
    msg = e.value.message
    assert "'neutral'" in msg and "row 2" in msg and "'negative'" in msg and "'positive'" in msg


def test_label_names_without_label2id(tmp_path):
    f = write(tmp_path / "d.csv", "text,label\na,positive\n")
    with pytest.raises(DataError, match="no label names to map") as e:
        load_dataset(f)
    assert "'positive'" in e.value.message and "row 1" in e.value.message


def test_fractional_label(tmp_path):
    f = jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": 0.5}])
    with pytest.raises(DataError, match=r"row 1.*0\.5"):
        load_dataset(f)


def test_missing_label_cell_names_row(tmp_path):
    f = write(tmp_path / "d.csv", "text,label\na,1\nb,\n")
    with pytest.raises(DataError, match=r"row 2 \(line 3\) has no label in column 'label'"):
        load_dataset(f)


def test_all_empty_auto_label_column_is_dropped_unless_required(tmp_path):
    f = write(tmp_path / "d.csv", "text,label\na,\nb,\n")
    ds = load_dataset(f)
    assert ds.labels is None and ds.label_column is None
    with pytest.raises(DataError, match="holds no labels"):
        load_dataset(f, require_labels=True)
    with pytest.raises(DataError, match="holds no labels"):
        load_dataset(f, label_column="label")


def test_require_labels_without_label_column(tmp_path):
    f = write(tmp_path / "d.tsv", "sentence\nhello there\n")
    assert load_dataset(f).labels is None
    with pytest.raises(DataError, match="has no label column") as e:
        load_dataset(f, require_labels=True)
    assert e.value.hint == "pass --label-column NAME"
    assert "sentence" in e.value.message


# --- bad files ------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_dataset(tmp_path / "nope.csv")


@pytest.mark.parametrize("name", ["d.csv", "d.tsv", "d.jsonl", "d.json"])
def test_empty_file(tmp_path, name):
    f = write(tmp_path / name, "")
    with pytest.raises(DataError, match="empty"):
        load_dataset(f)


@pytest.mark.parametrize(
    ("name", "content"), [("d.csv", "text,label\n"), ("d.tsv", "text\tlabel\n\n"), ("d.jsonl", "\n\n")]
)
def test_header_only_has_no_rows(tmp_path, name, content):
    f = write(tmp_path / name, content)
    with pytest.raises(DataError, match="no rows"):
        load_dataset(f)


def test_parquet_without_rows(tmp_path):
    pd = pytest.importorskip("pandas", reason="pandas not installed")
    pytest.importorskip("pyarrow", reason="pyarrow not installed")
    f = tmp_path / "d.parquet"
    pd.DataFrame({"text": pd.Series([], dtype=str), "label": pd.Series([], dtype=int)}).to_parquet(f)
    with pytest.raises(DataError, match="no rows"):
        load_dataset(f)


def test_not_utf8_names_byte_offset_and_line(tmp_path):
    f = write(tmp_path / "d.csv", "text,label\ncaf\u00e9 ok,1\nna\u00efve,0\n", encoding="latin-1")
    with pytest.raises(DataError, match="not valid UTF-8") as e:
        load_dataset(f)
    assert "offset 14" in e.value.message and "line 2" in e.value.message
    assert "UTF-8" in e.value.hint


def test_utf16_file_is_recognised(tmp_path):
    f = write(tmp_path / "d.tsv", "text\tlabel\nhi\t1\n", encoding="utf-16")
    with pytest.raises(DataError, match="UTF-16"):
        load_dataset(f)


def test_empty_text_cell_names_row(tmp_path):
    f = write(tmp_path / "d.tsv", "sentence\tlabel\nfine\t1\n   \t0\n")
    with pytest.raises(DataError, match=r"row 2 \(line 3\) has an empty text in column 'sentence'"):
        load_dataset(f)


def test_empty_pair_cell_names_row(tmp_path):
    f = jsonl(tmp_path / "d.jsonl", [{"sentence1": "a", "sentence2": "b"}, {"sentence1": "c", "sentence2": None}])
    with pytest.raises(DataError, match=r"row 2 \(line 2\).*'sentence2'"):
        load_dataset(f)


def test_non_text_cell(tmp_path):
    f = jsonl(tmp_path / "d.jsonl", [{"text": 5, "label": 1}])
    with pytest.raises(DataError, match="not text"):
        load_dataset(f)


def test_malformed_jsonl_names_line(tmp_path):
    f = write(tmp_path / "d.jsonl", '{"text": "a", "label": 1}\n\n{"text": "b", "label": \n')
    with pytest.raises(DataError, match="line 3 is not valid JSON"):
        load_dataset(f)
    f = write(tmp_path / "e.jsonl", '{"text": "a"}\n["b"]\n')
    with pytest.raises(DataError, match="line 2 is a JSON list"):
        load_dataset(f)


def test_tab_inside_tsv_text_is_reported(tmp_path):
    f = write(tmp_path / "d.tsv", "sentence\tlabel\na\tb\t1\n")
    with pytest.raises(DataError, match=r"row 1 \(line 2\) has 3 fields but the header has 2") as e:
        load_dataset(f)
    assert "tab" in e.value.hint


def test_duplicate_header(tmp_path):
    f = write(tmp_path / "d.csv", "text,text\na,b\n")
    with pytest.raises(DataError, match="twice"):
        load_dataset(f)


def test_unsupported_suffix_and_plain_directory(tmp_path):
    with pytest.raises(DataError, match="unsupported data format '.xlsx'"):
        load_dataset(write(tmp_path / "d.xlsx", "x"))
    (tmp_path / "dir").mkdir()
    with pytest.raises(DataError, match="not a dataset saved"):
        load_dataset(tmp_path / "dir")


def test_bad_limit(tmp_path):
    f = write(tmp_path / "d.csv", "text\na\n")
    with pytest.raises(ConfigError):
        load_dataset(f, limit=0)


# --- limit, subsets, batches ----------------------------------------------------------------------


def test_limit_stops_before_a_bad_row(tmp_path):
    # row 3 is broken; reading only two rows must never reach it
    f = write(tmp_path / "d.tsv", "text\tlabel\na\t0\nb\t1\n\t\t\n")
    ds = load_dataset(f, limit=2)
    assert ds.texts == ["a", "b"] and ds.labels == [0, 1]
    with pytest.raises(DataError):
        load_dataset(f)


def test_limit_jsonl(tmp_path):
    f = jsonl(tmp_path / "d.jsonl", [{"text": f"t{i}", "label": i % 2} for i in range(50)])
    assert len(load_dataset(f, limit=7)) == 7
    assert len(load_dataset(f, limit=500)) == 50


def _ds(n: int) -> TextDataset:
    return TextDataset(
        texts=[f"t{i}" for i in range(n)], pairs=[f"p{i}" for i in range(n)], labels=[i % 3 for i in range(n)]
    )


def test_sample_is_deterministic_and_ordered():
    ds = _ds(100)
    a, b, c = ds.sample(10, seed=1), ds.sample(10, seed=1), ds.sample(10, seed=2)
    assert a.texts == b.texts and a.texts != c.texts
    assert len(a) == 10 and a.texts == sorted(a.texts, key=lambda t: int(t[1:]))
    assert [int(t[1:]) for t in a.texts] == [int(p[1:]) for p in a.pairs]  # rows stay aligned
    assert a.labels == [int(t[1:]) % 3 for t in a.texts]
    assert ds.sample(100) is ds and ds.sample(1000) is ds


def test_head_and_batches():
    ds = _ds(5)
    assert ds.head(2).texts == ["t0", "t1"] and ds.head(2).labels == [0, 1]
    assert ds.head(9) is ds
    batches = list(ds.batches(2))
    assert [len(b[0]) for b in batches] == [2, 2, 1]
    assert batches[-1] == (["t4"], ["p4"], [1])
    plain = TextDataset(texts=["a", "b", "c"])
    assert list(plain.batches(5)) == [(["a", "b", "c"], None, None)]
    with pytest.raises(ValueError):
        next(plain.batches(0))


def test_mismatched_lengths_rejected():
    with pytest.raises(ValueError):
        TextDataset(texts=["a", "b"], labels=[1])


# --- shipped sample and lean import ---------------------------------------------------------------


def test_shipped_sample_file():
    path = sample_data_path()
    assert isinstance(path, Path) and path.is_file() and path.name == "sentiment.tsv"
    assert path.read_text(encoding="utf-8").splitlines()[0] == "label\tsentence"
    ds = load_dataset(path, require_labels=True, num_labels=2)
    assert len(ds) == 200
    assert Counter(ds.labels) == {0: 100, 1: 100}
    assert len(set(ds.texts)) == 200
    lengths = [len(t.split()) for t in ds.texts]
    assert min(lengths) >= 3 and max(lengths) <= 40
    assert all("\t" not in t for t in ds.texts)
    # labels as names through a model's label2id give the same ids
    assert load_dataset(path, label2id={"NEGATIVE": 0, "POSITIVE": 1}).labels == ds.labels


def test_import_is_lean():
    code = (
        "import sys, compress.data.tables; "
        "print(','.join(m for m in ('torch', 'pandas', 'pyarrow', 'datasets', 'transformers') if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True, cwd=ROOT)
    assert out.stdout.strip() == "", f"importing compress.data.tables pulled in: {out.stdout.strip()}"


@pytest.mark.parametrize("suffix", [".tsv", ".csv"])
def test_texts_longer_than_128_kib_are_read_and_truncated_later(tmp_path, suffix):
    from compress.data.tables import load_dataset

    long = "word " * 60_000  # 300 KB: above csv's default field limit
    sep = "\t" if suffix == ".tsv" else ","
    f = tmp_path / f"long{suffix}"
    f.write_text(f"label{sep}sentence\n1{sep}{long.strip()}\n0{sep}short\n", encoding="utf-8")
    ds = load_dataset(f)
    assert len(ds.texts[0]) == len(long.strip()) and ds.labels == [1, 0]


# --- regression targets ---------------------------------------------------------------------------


def test_a_regressors_label_column_is_read_as_numbers(tmp_path):
    """``targets``: a row of numbers per text (one, or k separated by spaces; a JSON list in .jsonl), never a class."""
    f = write(tmp_path / "t.tsv", "label\tsentence\n2.10\tgood\n-1\tbad\n3e-1\tok\n")
    assert load_dataset(f, targets=True).labels == [[2.1], [-1.0], [0.3]]
    assert load_dataset(write(tmp_path / "k.csv", "text,target\na,1.5 2\nb,0 -3.25\n"), targets=True).labels == \
        [[1.5, 2.0], [0.0, -3.25]]
    assert load_dataset(jsonl(tmp_path / "j.jsonl", [{"text": "a", "label": [1, 2.5]}, {"text": "b", "label": [0, 1]}]),
                        targets=True).labels == [[1.0, 2.5], [0.0, 1.0]]
    assert load_dataset(write(tmp_path / "e.tsv", "label\tsentence\n\tgood\n"), targets=True).labels is None
    for body, words in (("2.1\tgood\npositive\tbad\n", ["row 2", "'positive' is not a number"]),
                        ("2.1\tgood\nnan\tbad\n", ["row 2", "not a finite number"]),
                        ("2.1\tgood\n\tbad\n", ["row 2", "has no target"]),
                        ("2.1\tgood\n1 2\tbad\n", ["row 2", "2 target value(s)", "the first row has 1"])):
        with pytest.raises(DataError) as e:
            load_dataset(write(tmp_path / "bad.tsv", "label\tsentence\n" + body), targets=True)
        assert all(w in str(e.value) for w in words), str(e.value)
    with pytest.raises(DataError, match="is a name"):  # without targets (a classifier's data), as before
        load_dataset(f)
