from pathlib import Path

import pytest

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
        (None, "stsb", "train", ValueError, r"`task` to be one of \[.*'sst2'.*\], but got 'stsb'"),
        (None, "sst2", "test", ValueError, r"`split` of task 'sst2' to be one of \['train', 'validation'\]"),
        (None, "qnli", "validation", FileNotFoundError, r"No validation file for GLUE task 'qnli'.*QNLI/dev.tsv"),
        ("SST-2/dev.tsv:sentence\tlabel\n", "sst2", "validation", ValueError, "has no examples"),
        (
            "SST-2/dev.tsv:text\tlabel\nhi\t1\n",
            "sst2",
            "validation",
            ValueError,
            r"no column 'sentence' \(task 'sst2'\); its columns are \['text', 'label'\]",
        ),
        (
            "SST-2/dev.tsv:sentence\tlabel\nhi\t2\n",
            "sst2",
            "validation",
            ValueError,
            r"line 2: label '2' is not one of the sst2 labels \['0', '1'\]",
        ),
        (
            "RTE/dev.tsv:index\tsentence1\tsentence2\tlabel\n0\ta\tb\tneutral\n",
            "rte",
            "validation",
            ValueError,
            r"label 'neutral' is not one of the rte labels",
        ),
        (
            "SST-2/dev.tsv:sentence\tlabel\nhi\t1\textra\n",
            "sst2",
            "validation",
            ValueError,
            "line 2: expected 2 tab-separated fields, got 3",
        ),
        ("SST-2/dev.tsv:", "sst2", "validation", ValueError, "is empty"),
    ],
)
def test_bad_data_is_named(tmp_path, setup, task, split, exc, match):
    if setup:
        name, text = setup.split(":", 1)
        write(tmp_path / name, text)
    with pytest.raises(exc, match=match):
        read_glue_split(tmp_path, task, split)


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
