from pathlib import Path

import pytest

from lightning_attattr.core.checks import ArgumentError, DataFileError, PathNotFoundError, UserError
from lightning_attattr.data.glue import GLUE_TASKS, get_task, read_glue_split

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "glue"


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding=encoding)
    return path


@pytest.fixture
def glue(tmp_path):
    write(
        tmp_path / "SST-2" / "train.tsv",
        'sentence\tlabel\n" the bourne identity " is a fun ride .\t1\nNA\t0\nnull\t1\n"unbalanced quote\t0\n',
    )
    write(
        tmp_path / "RTE" / "dev.tsv",
        'index\tsentence1\tsentence2\tlabel\n0\t"The Persians" was written.\tnan\tentailment\n'
        "1\tA\tB\tnot_entailment\n",
    )
    write(
        tmp_path / "MRPC" / "dev.tsv",
        '\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tHe said "yes".\tHe agreed.\n0\t3\t4\tA\tB\n',
    )
    write(tmp_path / "CoLA" / "dev.tsv", "gj04\t1\t\tThe sailors rode the breeze.\ngj04\t0\t*\tNA rode.")
    write(
        tmp_path / "MNLI" / "dev_matched.tsv",
        "index\tpromptID\tpairID\tgenre\ts1b\ts2b\ts1p\ts2p\tsentence1\tsentence2\tlabel1\tlabel2\tgold_label\n"
        "0\t1\t1e\tfiction\tx\tx\tx\tx\tFloods hit.\tIce melts.\tneutral\tcontradiction\tcontradiction\n",
    )
    return tmp_path


def test_text_is_read_verbatim_without_quote_or_na_processing(glue):
    sst = read_glue_split(glue, "SST-2", "train")
    assert sst.text_a == ['" the bourne identity " is a fun ride .', "NA", "null", '"unbalanced quote']
    assert sst.labels == [1, 0, 1, 0] and sst.text_b is None
    rte = read_glue_split(glue, "rte", "validation")
    assert rte.text_a[0] == '"The Persians" was written.' and rte.text_b == ["nan", "B"]
    assert rte.labels == [0, 1]


def test_mrpc_bom_cola_headerless_and_mnli_gold_label(glue):
    mrpc = read_glue_split(glue, "mrpc", "validation")
    assert mrpc.text_a == ['He said "yes".', "A"] and mrpc.labels == [1, 0]
    cola = read_glue_split(glue, "cola", "validation")
    assert cola.text_a == ["The sailors rode the breeze.", "NA rode."] and cola.labels == [1, 0]
    mnli = read_glue_split(glue, "mnli", "validation_matched")
    assert mnli.text_a == ["Floods hit."] and mnli.text_b == ["Ice melts."] and mnli.labels == [0]
    assert get_task("mnli").num_labels == 3


@pytest.mark.parametrize(
    ("setup", "task", "split", "exc", "match"),
    [
        (None, "stsb", "train", ArgumentError, r"`task` to be one of \[.*'sst2'.*\], but got 'stsb'"),
        (None, "sst2", "test", ArgumentError, r"`split` of task 'sst2' to be one of \['train', 'validation'\]"),
        (None, "qnli", "validation", PathNotFoundError, r"No validation file for GLUE task 'qnli'.*QNLI/dev.tsv"),
        ("SST-2/dev.tsv:sentence\tlabel\n", "sst2", "validation", DataFileError, "has no examples"),
        (
            "SST-2/dev.tsv:text\tlabel\nhi\t1\n",
            "sst2",
            "validation",
            DataFileError,
            r"no column 'sentence' \(task 'sst2'\); its columns are \['text', 'label'\]",
        ),
        (
            "SST-2/dev.tsv:sentence\tlabel\nhi\t2\n",
            "sst2",
            "validation",
            DataFileError,
            r"line 2: label '2' is not one of the sst2 labels \['0', '1'\]",
        ),
        (
            "RTE/dev.tsv:index\tsentence1\tsentence2\tlabel\n0\ta\tb\tneutral\n",
            "rte",
            "validation",
            DataFileError,
            r"label 'neutral' is not one of the rte labels",
        ),
        (
            "SST-2/dev.tsv:sentence\tlabel\nhi\t1\textra\n",
            "sst2",
            "validation",
            DataFileError,
            "line 2: expected 2 tab-separated fields, got 3",
        ),
        ("SST-2/dev.tsv:", "sst2", "validation", DataFileError, "is empty"),
    ],
)
def test_bad_data_is_named(tmp_path, setup, task, split, exc, match):
    if setup:
        name, text = setup.split(":", 1)
        write(tmp_path / name, text)
    with pytest.raises(exc, match=match) as info:
        read_glue_split(tmp_path, task, split)
    assert type(info.value) is exc and isinstance(info.value, UserError)


def test_non_utf8_bytes_name_the_line_and_offset(tmp_path):
    path = tmp_path / "SST-2" / "dev.tsv"
    path.parent.mkdir()
    # "sentence\tlabel\n" is 15 bytes, "ok\t1\n" 5: the Latin-1 é of "café" is byte 23, the 4th of line 3
    path.write_bytes(b"sentence\tlabel\nok\t1\ncaf\xe9\t0\n")
    with pytest.raises(
        DataFileError, match=r"dev\.tsv, line 3 \(byte offset 23, byte 4 of the line\): b'\\xe9'"
    ) as info:
        read_glue_split(tmp_path, "sst2", "validation")
    assert "not valid UTF-8" in str(info.value) and isinstance(info.value.__cause__, UnicodeDecodeError)
    # MRPC's byte-order mark is skipped but counted in the offset: 3 + 28 header bytes + "1\ta\t" = 35
    mrpc = tmp_path / "MRPC" / "dev.tsv"
    mrpc.parent.mkdir()
    mrpc.write_bytes(b"\xef\xbb\xbfQuality\t#1 String\t#2 String\n1\ta\t\xff\n")
    with pytest.raises(DataFileError, match=r"line 2 \(byte offset 35, byte 5 of the line\): b'\\xff'"):
        read_glue_split(tmp_path, "mrpc", "validation")


@pytest.mark.parametrize(
    "header",
    [
        "source\tlabel\toriginal_label\tsentence",  # the column names of GlueTask("cola").columns
        "sentence_source\tlabel\tlabel_notes\tsentence",  # the header of exported copies
        "sentence\tlabel\tidx",  # a Hugging Face export: fewer fields, too
    ],
)
def test_cola_header_line_says_to_remove_it(tmp_path, header):
    write(tmp_path / "CoLA" / "train.tsv", f"{header}\ngj04\t1\t\tThe sailors rode the breeze.\n")
    with pytest.raises(DataFileError, match=r"train\.tsv, line 1: .* looks like a header line") as info:
        read_glue_split(tmp_path, "cola", "train")
    message = str(info.value)
    assert "GLUE's CoLA files have no header line" in message and "remove the first line" in message
    assert isinstance(info.value, UserError)


def test_cola_rows_about_labels_are_not_headers(tmp_path):
    # a valid label in the label column: data, even when the sentence is a column name
    write(tmp_path / "CoLA" / "dev.tsv", "gj04\t1\t\tsentence\ngj04\t0\t*\tlabel\n")
    assert read_glue_split(tmp_path, "cola", "validation").text_a == ["sentence", "label"]
    # a bad label without column names is a bad label, not a header
    write(tmp_path / "CoLA" / "train.tsv", "gj04\t7\t\tThe sailors rode.\n")
    with pytest.raises(
        DataFileError, match=r"line 1: label '7' is not one of the cola labels \['0', '1'\] \(column 'label'\)"
    ):
        read_glue_split(tmp_path, "cola", "train")


def test_overlong_field_is_a_data_error(tmp_path):
    write(tmp_path / "SST-2" / "dev.tsv", "sentence\tlabel\nok\t1\n" + "x" * 200_000 + "\t0\n")
    with pytest.raises(DataFileError, match=r"dev\.tsv, line 3: not a tab-separated GLUE file \(field larger"):
        read_glue_split(tmp_path, "sst2", "validation")


@pytest.mark.skipif(not SHARED.exists(), reason="the shared GLUE copy is not beside the checkout")
@pytest.mark.parametrize(
    ("task", "split", "n", "counts"),
    [
        ("sst2", "validation", 872, {1: 444, 0: 428}),
        ("rte", "train", 2490, {0: 1249, 1: 1241}),
        ("mrpc", "train", 3668, {1: 2474, 0: 1194}),
        ("cola", "train", 8551, {1: 6023, 0: 2528}),
        ("qnli", "validation", 5463, {0: 2702, 1: 2761}),
    ],
)
def test_shared_glue_copy_matches_official_counts(task, split, n, counts):
    data = read_glue_split(SHARED, task, split)
    assert len(data) == n
    assert {k: data.labels.count(k) for k in counts} == counts


def test_every_task_has_consistent_metadata():
    for name, task in GLUE_TASKS.items():
        assert task.name == name and task.num_labels >= 2 and "acc" in task.metrics
