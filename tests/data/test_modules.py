import pickle
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from lightning_attattr.core.checks import (
    ArgumentError,
    ArgumentTypeError,
    DataFileError,
    PathNotFoundError,
    UserError,
)
from lightning_attattr.data.glue import read_glue_split
from lightning_attattr.data.modules import GlueDataModule, SyntheticDataModule
from lightning_attattr.data.synthetic import KEY_A, KEY_B

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "glue"

from tests.conftest import LONG, SST_DEV, SST_TRAIN, VOCAB  # noqa: E402,F401  (fixtures: glue, tokenizer_dir)


def tokens(dm, ids):
    return dm.tokenizer.convert_ids_to_tokens([int(i) for i in ids])


# ----------------------------------------------------------------------------- GLUE: reading
def test_texts_come_through_verbatim(glue, tokenizer_dir):
    dm = GlueDataModule("SST-2", tokenizer_dir, glue)
    train = dm.examples("train")
    assert train.text_a == [t for t, _ in SST_TRAIN] and train.labels == [y for _, y in SST_TRAIN]
    assert train.text_b is None and train.split == "train"
    # the quotes and the words NA / null / nan reach the tokenizer as text
    ds = dm.dataset("train")
    assert tokens(dm, ds[0]["input_ids"]) == ["[CLS]", '"', "the", "ride", '"', "is", "fun", ".", "[SEP]"]
    assert tokens(dm, ds[1]["input_ids"]) == ["[CLS]", "na", "[SEP]"]
    assert tokens(dm, ds[2]["input_ids"])[1] == "null" and tokens(dm, ds[11]["input_ids"])[1] == "nan"
    assert [ds[i]["labels"] for i in range(len(ds))] == train.labels


def test_bom_headerless_cola_and_pairs(glue, tokenizer_dir):
    mrpc = GlueDataModule("mrpc", tokenizer_dir, glue).examples("validation")
    assert mrpc.text_a == ['He said "yes".', "NA"] and mrpc.text_b == ["He agreed.", "null"] and mrpc.labels == [1, 0]
    cola = GlueDataModule("cola", tokenizer_dir, glue).examples("train")
    assert cola.text_a == ["The sailors rode the breeze.", "NA rode."] and cola.labels == [1, 0]
    rte = GlueDataModule("rte", tokenizer_dir, glue)
    assert rte.examples("train").text_a[0] == '"The Persians" was written.'
    assert rte.examples("train").text_b == ["nan", "null"] and rte.examples("train").labels == [0, 1]


def test_pair_encoding_has_segment_ids(glue, tokenizer_dir):
    dm = GlueDataModule("rte", tokenizer_dir, glue)
    row = dm.dataset("train")[0]
    toks = tokens(dm, row["input_ids"])
    assert toks == ["[CLS]", '"', "the", "persians", '"', "was", "written", ".", "[SEP]", "nan", "[SEP]"]
    assert row["token_type_ids"] == [0] * 9 + [1] * 2
    batch = next(iter(dm.train_dataloader()))
    assert (batch["token_type_ids"] == 1).any()


def test_dynamic_padding_and_collated_batch(glue, tokenizer_dir):
    dm = GlueDataModule("sst2", tokenizer_dir, glue, eval_batch_size=2)
    dm.setup("validate")
    first, second = list(dm.val_dataloader())
    assert set(first) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert first["labels"].dtype == torch.int64 and first["labels"].tolist() == [1, 0]
    # padded to the longest of its own batch ([CLS] the ride is fun [SEP] = 6), not to max_seq_length
    assert first["input_ids"].shape == (2, 6) and first["attention_mask"].sum(1).tolist() == [6, 3]
    assert first["input_ids"][1, 3:].tolist() == [0, 0, 0] and first["attention_mask"][1, 3:].tolist() == [0, 0, 0]
    assert second["input_ids"].shape == (1, 44)  # the long sentence alone: 42 words + 2 specials, < 128


def test_truncation_at_max_seq_length(glue, tokenizer_dir):
    dm = GlueDataModule("sst2", tokenizer_dir, glue, max_seq_length=8)
    long = dm.dataset("validation")[2]["input_ids"]
    assert len(long) == 8 and tokens(dm, long)[0] == "[CLS]" and tokens(dm, long)[-1] == "[SEP]"
    rte = GlueDataModule("rte", tokenizer_dir, glue, max_seq_length=10)
    pair = rte.dataset("validation")[2]
    assert len(pair["input_ids"]) == 10 and tokens(rte, pair["input_ids"]).count("[SEP]") == 2
    assert max(len(r["input_ids"]) for r in GlueDataModule("sst2", tokenizer_dir, glue).dataset("validation")) == 44


def test_mnli_has_two_validation_loaders(glue, tokenizer_dir):
    dm = GlueDataModule("mnli", tokenizer_dir, glue, eval_batch_size=8)
    assert dm.num_labels == 3 and dm.label_names == ("contradiction", "entailment", "neutral")
    assert dm.val_split_names == ("validation_matched", "validation_mismatched")
    dm.setup("fit")
    loaders = dm.val_dataloader()
    assert isinstance(loaders, list) and len(loaders) == 2
    matched, mismatched = (next(iter(loader)) for loader in loaders)
    assert matched["labels"].tolist() == [0, 1, 2] and mismatched["labels"].tolist() == [2]
    assert dm.examples("validation_matched").text_a[1] == '"NA"'
    assert [len(loader.dataset) for loader in dm.test_dataloader()] == [3, 1]
    with pytest.raises(ArgumentError, match=r"`split` to be one of \['train', 'validation_matched', 'valid"):
        dm.examples("validation")


class Recorder(pl.LightningModule):
    """Records what each validation loader delivers (independent of the classifier's metrics)."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.seen = []

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        self.seen.append((dataloader_idx, batch["labels"].tolist(), tuple(batch["input_ids"].shape)))


class Trainable(Recorder):
    def training_step(self, batch, batch_idx):
        return self.layer(batch["labels"].float()[:, None]).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_trainer_runs_both_mnli_loaders_in_order(glue, tokenizer_dir, tmp_path):
    dm = GlueDataModule("mnli", tokenizer_dir, glue, eval_batch_size=2)
    model = Recorder()
    trainer = pl.Trainer(default_root_dir=tmp_path, logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.validate(model, datamodule=dm, verbose=False)
    assert [(i, labels) for i, labels, _ in model.seen] == [(0, [0, 1]), (0, [2]), (1, [2])]
    assert all(shape[0] == len(labels) for _, labels, shape in model.seen)


def test_max_samples_take_the_first_rows(glue, tokenizer_dir):
    dm = GlueDataModule("sst2", tokenizer_dir, glue, max_train_samples=5, max_eval_samples=2)
    assert dm.examples("train").text_a == [t for t, _ in SST_TRAIN[:5]]
    assert len(dm.dataset("train")) == 5 and len(dm.dataset("validation")) == 2
    big = GlueDataModule("sst2", tokenizer_dir, glue, max_train_samples=1000)
    assert len(big.dataset("train")) == len(SST_TRAIN)


def epoch(dm):
    return [row for batch in dm.train_dataloader() for row in batch["input_ids"].tolist()]


def test_training_shuffle_is_seeded(glue, tokenizer_dir):
    def order(seed):
        dm = GlueDataModule("sst2", tokenizer_dir, glue, train_batch_size=4, seed=seed)
        loader = dm.train_dataloader()
        return [batch["labels"].tolist() + batch["input_ids"][:, 1].tolist() for batch in loader]

    assert order(1) == order(1)
    assert order(1) != order(2)
    dm = GlueDataModule("sst2", tokenizer_dir, glue, train_batch_size=5)
    rows = [tuple(r[r != 0].tolist()) for b in dm.train_dataloader() for r in b["input_ids"]]
    assert sorted(rows) == sorted(tuple(dm.dataset("train")[i]["input_ids"]) for i in range(len(SST_TRAIN)))


def test_metadata_needs_no_io(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise AssertionError("no I/O expected")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    dm = GlueDataModule("MNLI")
    assert (dm.num_labels, dm.task_name, len(dm.val_split_names)) == (3, "mnli", 2)
    assert GlueDataModule("cola").label_names == ("0", "1") and GlueDataModule("qqp").num_labels == 2
    assert dm.hparams.task_name == "MNLI" and dm.hparams.max_seq_length == 128


# ----------------------------------------------------------------------------- GLUE: hub
def fake_hub(calls):
    import datasets

    def load_dataset(path, name=None, **kwargs):
        calls.append((path, name))
        label = datasets.ClassLabel(names=["entailment", "neutral", "contradiction"])
        features = datasets.Features(premise=datasets.Value("string"), hypothesis=datasets.Value("string"), label=label)
        if name == "mnli":
            rows = dict(premise=['"NA" said', "null", "x"], hypothesis=["he", "she", "it"], label=[0, 1, 2])
            split = datasets.Dataset.from_dict(rows, features=features)
            return datasets.DatasetDict(
                train=split, validation_matched=split, validation_mismatched=split.select([2]), test_matched=split
            )
        assert name == "sst2"
        features = datasets.Features(
            sentence=datasets.Value("string"), label=datasets.ClassLabel(names=["negative", "positive"])
        )
        train = datasets.Dataset.from_dict(dict(sentence=["good", "bad", "NA"], label=[1, 0, 1]), features=features)
        test = datasets.Dataset.from_dict(
            dict(sentence=["x"], label=[-1]),
            features=datasets.Features(sentence=datasets.Value("string"), label=datasets.Value("int64")),
        )
        return datasets.DatasetDict(train=train, validation=train.select([1, 0]), test=test)

    return load_dataset


def test_hub_path_maps_columns_and_labels(monkeypatch, tokenizer_dir):
    import datasets

    calls = []
    monkeypatch.setattr(datasets, "load_dataset", fake_hub(calls))
    dm = GlueDataModule("mnli", tokenizer_dir, max_train_samples=2)
    dm.setup("fit")
    train = dm.examples("train")
    assert train.text_a == ['"NA" said', "null"] and train.text_b == ["he", "she"]
    # hub entailment/neutral/contradiction = 0/1/2 -> ours contradiction/entailment/neutral = 0/1/2
    assert train.labels == [1, 2] and dm.examples("validation_matched").labels == [1, 2, 0]
    assert [dm.label_names[i] for i in dm.examples("validation_mismatched").labels] == ["contradiction"]
    assert calls == [("nyu-mll/glue", "mnli")]  # loaded once, shared by all splits
    assert (next(iter(dm.train_dataloader()))["token_type_ids"] == 1).any()
    sst = GlueDataModule("sst2", tokenizer_dir, max_eval_samples=1)
    assert sst.examples("train").labels == [1, 0, 1] and sst.examples("validation").text_a == ["bad"]


def test_hub_failure_says_to_pass_data_dir(monkeypatch):
    import datasets

    def unreachable(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    dm = GlueDataModule("rte")
    with pytest.raises(ArgumentError, match=r"GLUE task 'rte' from the Hugging Face hub.*Couldn't reach.*`data_dir`"):
        dm.examples("train")
    with pytest.raises(ArgumentError, match="`data_dir`"):
        dm.prepare_data()
    dm.check_files("fit")  # nothing to check for the hub (and no I/O)


def test_hub_labels_out_of_range_are_a_data_error(monkeypatch, tokenizer_dir):
    import datasets

    calls = []
    monkeypatch.setattr(datasets, "load_dataset", fake_hub(calls))
    dm = GlueDataModule("sst2", tokenizer_dir)
    dm._hub = dm._download_hub()
    dm._hub["validation"] = dm._hub["test"]  # label -1: the hidden labels of a test split
    with pytest.raises(DataFileError, match=r"Hub split 'validation' of 'sst2', row 0: label -1 is not in \[0, 1\]"):
        dm.examples("validation")


# ----------------------------------------------------------------------------- GLUE: errors
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(task_name="stsb"), r"`task` to be one of \[.*'sst2'.*\], but got 'stsb'"),
        (dict(max_seq_length=0), "`max_seq_length` to be an integer >= 8, but got 0"),
        (dict(max_seq_length=12.0), r"`max_seq_length` to be an integer >= 8, but got 12.0"),
        (dict(train_batch_size=0), "`train_batch_size` to be an integer >= 1, but got 0"),
        (dict(eval_batch_size=True), "`eval_batch_size` to be an integer >= 1, but got True"),
        (dict(num_workers=-1), "`num_workers` to be an integer >= 0, but got -1"),
        (dict(max_train_samples=0), "`max_train_samples` to be an integer >= 1 or None, but got 0"),
        (dict(max_eval_samples=-3), "`max_eval_samples` to be an integer >= 1 or None, but got -3"),
        (dict(seed="1"), "`seed` to be an integer, but got '1'"),
        (dict(model_name_or_path=""), "`model_name_or_path` to be a hub name or a local tokenizer directory"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        GlueDataModule(**kwargs)
    assert isinstance(info.value, (ArgumentError, ArgumentTypeError))


def test_argument_checks_keep_the_message_style():
    with pytest.raises(ArgumentError, match=r"^Expected `train_batch_size` to be an integer >= 1, but got 0\.$"):
        GlueDataModule(train_batch_size=0)
    with pytest.raises(ArgumentTypeError, match="`seed` to be an integer, but got 1.5"):
        SyntheticDataModule(seed=1.5)
    with pytest.raises(ArgumentTypeError, match="`model_name_or_path` to be a hub name"):
        GlueDataModule(model_name_or_path=3)


def test_missing_data_and_tokenizer_are_named(tmp_path, glue, tokenizer_dir):
    missing = tmp_path / "no_such_glue"
    with pytest.raises(PathNotFoundError, match=rf"`data_dir`.*'{missing}' does not exist"):
        GlueDataModule(data_dir=str(missing))
    (tmp_path / "file.tsv").write_text("x")
    with pytest.raises(PathNotFoundError, match="file.tsv. is a file, not a directory"):
        GlueDataModule(data_dir=str(tmp_path / "file.tsv"))
    with pytest.raises(PathNotFoundError, match=r"`validate` needs the validation split of GLUE task 'qnli'.*dev.tsv"):
        GlueDataModule("qnli", tokenizer_dir, glue).setup("validate")
    with pytest.raises(PathNotFoundError, match=r"No validation file for GLUE task 'qnli'.*QNLI/dev.tsv"):
        GlueDataModule("qnli", tokenizer_dir, glue).examples("validation")
    dm = GlueDataModule("sst2", data_dir=glue)
    assert len(dm.examples("train")) == len(SST_TRAIN)  # texts need no tokenizer
    with pytest.raises(ArgumentError, match="`model_name_or_path` to name a tokenizer.*but got None"):
        dm.setup("fit")


# ----------------------------------------------------------------------------- GLUE: the tokenizer source
@pytest.mark.parametrize("relative", [False, True])
def test_missing_local_model_path_is_named(tmp_path, glue, monkeypatch, relative):
    monkeypatch.chdir(tmp_path)
    path = "./nowhere/bert" if relative else str(tmp_path / "nowhere" / "bert")
    dm = GlueDataModule("sst2", path, glue)
    # transformers alone would call this path a malformed hub repo id
    with pytest.raises(PathNotFoundError, match=rf"`model_name_or_path`.*local path '{path}' does not exist") as info:
        dm.tokenizer  # noqa: B018
    assert isinstance(info.value, UserError) and isinstance(info.value, OSError)
    with pytest.raises(PathNotFoundError, match="nowhere"):
        dm.setup("fit")


def test_directory_without_tokenizer_files_is_named(tmp_path, glue):
    model_dir = tmp_path / "model_only"
    model_dir.mkdir()
    (model_dir / "config.json").write_text('{"model_type": "bert"}')
    # transformers would load a 5-token BertTokenizer from this directory without complaint
    with pytest.raises(
        PathNotFoundError, match=r"'.*model_only' to hold a tokenizer.*no tokenizer files.*config\.json"
    ):
        GlueDataModule("sst2", str(model_dir), glue).tokenizer  # noqa: B018
    (tmp_path / "vocab.txt").write_text("[PAD]\n")
    with pytest.raises(PathNotFoundError, match="vocab.txt. is a file"):
        GlueDataModule("sst2", str(tmp_path / "vocab.txt"), glue).tokenizer  # noqa: B018


def test_unreadable_local_tokenizer_is_a_data_error(tmp_path, glue):
    (tmp_path / "tokenizer.json").write_text("{")
    with pytest.raises(DataFileError, match=r"Could not load the tokenizer in `model_name_or_path`='.*': JSONDecode"):
        GlueDataModule("sst2", str(tmp_path), glue).tokenizer  # noqa: B018


def test_hub_tokenizer_failure_is_one_clear_message(monkeypatch, glue):
    from transformers import AutoTokenizer

    def offline(name, *args, **kwargs):
        raise OSError(
            "We couldn't connect to 'https://huggingface.co' to load the files, and couldn't find them in the "
            "cached files.\nCheck your internet connection or see how to run the library in offline mode."
        )

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", offline)
    dm = GlueDataModule("sst2", "bert-base-uncased", glue)
    with pytest.raises(
        ArgumentError, match=r"`model_name_or_path`='bert-base-uncased' from the Hugging Face hub"
    ) as info:
        dm.tokenizer  # noqa: B018
    message = str(info.value)
    assert "\n" not in message and "couldn't connect" in message and "local model or tokenizer directory" in message
    with pytest.raises(ArgumentError, match="bert-base-uncased"):
        dm.prepare_data()


# ----------------------------------------------------------------------------- GLUE: check_files
def test_check_files_fit_needs_train_and_validation(tmp_path, tokenizer_dir):
    (tmp_path / "SST-2").mkdir()
    (tmp_path / "SST-2" / "dev.tsv").write_text("sentence\tlabel\nhello\t1\n")
    dm = GlueDataModule("sst2", data_dir=str(tmp_path))  # no tokenizer: check_files must come first
    for stage in ("validate", "test", "predict"):
        dm.check_files(stage)
    with pytest.raises(
        PathNotFoundError, match=r"`fit` needs the train split of GLUE task 'sst2'.*no train\.tsv"
    ) as info:
        dm.check_files("fit")
    assert str(tmp_path / "SST-2") in str(info.value) and isinstance(info.value, UserError)
    with pytest.raises(PathNotFoundError, match="train split"):
        dm.check_files(None)
    with pytest.raises(PathNotFoundError, match="`fit` needs the train split"):
        dm.setup("fit")  # before the missing tokenizer is noticed
    with pytest.raises(PathNotFoundError, match="train split"):
        dm.prepare_data()  # no trainer: every split
    with pytest.raises(ArgumentError, match=r"`stage` to be one of \['fit', 'validate', 'test', 'predict'\]"):
        dm.check_files("tune")
    dm = GlueDataModule("sst2", tokenizer_dir, str(tmp_path))
    dm.setup("validate")
    assert len(dm.dataset("validation")) == 1


def test_check_files_names_every_missing_mnli_split(tmp_path):
    (tmp_path / "MNLI").mkdir()
    (tmp_path / "MNLI" / "train.tsv").write_text("x")
    dm = GlueDataModule("mnli", data_dir=str(tmp_path))
    with pytest.raises(
        PathNotFoundError,
        match=r"`validate` needs the validation_matched and validation_mismatched splits.*dev_matched\.tsv or dev_mis",
    ):
        dm.check_files("validate")


def test_trainer_validate_checks_files_in_prepare_data(tmp_path, tokenizer_dir):
    (tmp_path / "SST-2").mkdir()
    (tmp_path / "SST-2" / "dev.tsv").write_text("sentence\tlabel\nhello\t1\nthe cat\t0\n")
    dm = GlueDataModule("sst2", tokenizer_dir, str(tmp_path))
    model = Recorder()
    trainer = pl.Trainer(
        default_root_dir=tmp_path, logger=False, enable_progress_bar=False, enable_model_summary=False, max_epochs=1
    )
    trainer.validate(model, datamodule=dm, verbose=False)  # no train.tsv needed to validate
    assert [labels for _, labels, _ in model.seen] == [[1, 0]]
    with pytest.raises(PathNotFoundError, match="`fit` needs the train split"):
        trainer.fit(Trainable(), datamodule=GlueDataModule("sst2", tokenizer_dir, str(tmp_path)))


# ----------------------------------------------------------------------------- batches
def test_max_length_is_the_longest_possible_sequence(glue, tokenizer_dir):
    assert GlueDataModule("sst2", tokenizer_dir, glue, max_seq_length=16).max_length == 16
    dm = SyntheticDataModule(n_train=8, n_val=64, min_len=3, max_len=9, eval_batch_size=64)
    assert dm.max_length == 11  # 9 words + [CLS] + [SEP]
    longest = max(batch["input_ids"].shape[1] for batch in dm.val_dataloader())
    assert longest <= dm.max_length
    assert max(len(dm.dataset("validation")[i]["input_ids"]) for i in range(64)) == dm.max_length


def test_batches_are_int64_dicts_padded_with_the_tokenizer_values(glue, tokenizer_dir):
    dm = GlueDataModule("rte", tokenizer_dir, glue, eval_batch_size=3)
    dm.tokenizer.pad_token = "[MASK]"  # a non-zero pad id shows where padding comes from
    pad = dm.tokenizer.pad_token_id
    assert pad == 4
    batch = next(iter(dm.val_dataloader()))
    assert type(batch) is dict and set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert all(v.dtype == torch.int64 for v in batch.values())
    assert batch["labels"].shape == (3,) and batch["labels"].tolist() == [0, 1, 0]
    n, seq = batch["input_ids"].shape
    assert n == 3 and batch["attention_mask"].shape == batch["token_type_ids"].shape == (3, seq)
    lengths = batch["attention_mask"].sum(1).tolist()
    assert seq == max(lengths) == 87  # the long pair: 2 * 42 words + [CLS] [SEP] [SEP], under max_seq_length
    for row, length in enumerate(lengths):
        assert batch["input_ids"][row, length:].eq(pad).all() and batch["attention_mask"][row, length:].eq(0).all()
        assert batch["token_type_ids"][row, length:].eq(dm.tokenizer.pad_token_type_id).all()
        assert batch["input_ids"][row, :length].ne(pad).all() and (batch["token_type_ids"][row, :length] == 1).any()


def test_left_padding_follows_the_tokenizer(glue, tokenizer_dir):
    dm = GlueDataModule("sst2", tokenizer_dir, glue, eval_batch_size=2)
    dm.tokenizer.padding_side = "left"
    first = next(iter(dm.val_dataloader()))
    # [CLS] the ride is fun [SEP] and [CLS] hello [SEP], padded on the left
    assert tokens(dm, first["input_ids"][1]) == ["[PAD]"] * 3 + ["[CLS]", "hello", "[SEP]"]
    assert first["attention_mask"].tolist() == [[1] * 6, [0, 0, 0, 1, 1, 1]]
    assert first["token_type_ids"].tolist() == [[0] * 6] * 2


def test_datasets_are_in_memory_and_loaders_work_with_workers(glue, tokenizer_dir):
    import datasets

    dm = GlueDataModule("mrpc", tokenizer_dir, glue, eval_batch_size=1, num_workers=1)
    ds = dm.dataset("validation")
    assert isinstance(ds, datasets.Dataset) and ds.cache_files == [] and len(ds) == 2
    assert ds[1]["labels"] == 0 and tokens(dm, ds[1]["input_ids"]) == ["[CLS]", "na", "[SEP]", "null", "[SEP]"]
    pickle.loads(pickle.dumps(dm.collator))
    batches = list(dm.val_dataloader())
    assert [b["labels"].tolist() for b in batches] == [[1], [0]] and batches[1]["token_type_ids"].tolist() == [
        [0, 0, 0, 1, 1]
    ]


def test_tokenizer_without_pad_token_is_named(glue, tokenizer_dir):
    dm = GlueDataModule("sst2", tokenizer_dir, glue)
    dm.tokenizer.pad_token = None
    with pytest.raises(ArgumentError, match="to have a padding token to pad batches, but `pad_token_id` is None"):
        dm.val_dataloader()


@pytest.mark.skipif(not SHARED.exists(), reason="the shared GLUE copy is not beside the checkout")
def test_shared_sst2_subset(tokenizer_dir):
    dm = GlueDataModule("sst2", tokenizer_dir, str(SHARED), max_train_samples=64, max_eval_samples=64)
    dm.setup("fit")
    assert len(dm.dataset("train")) == 64 and len(dm.dataset("validation")) == 64
    raw = read_glue_split(SHARED, "sst2", "validation")
    assert dm.examples("validation").text_a == raw.text_a[:64] and dm.examples("validation").labels == raw.labels[:64]
    batch = next(iter(dm.val_dataloader()))
    assert batch["input_ids"].shape[0] == 64 and batch["input_ids"].shape[1] <= 128


# ----------------------------------------------------------------------------- synthetic
def test_synthetic_is_deterministic_and_val_is_a_different_sample():
    a, b = SyntheticDataModule(n_train=64, n_val=32), SyntheticDataModule(n_train=64, n_val=32)
    assert a.train_examples == b.train_examples and a.val_examples == b.val_examples
    assert epoch(a) == epoch(b)
    assert a.val_examples != a.train_examples[:32] and a.val_seed == 1_000_003
    train_texts = {ex.text for ex in SyntheticDataModule(n_train=2000, n_val=500).train_examples}
    val_texts = [ex.text for ex in SyntheticDataModule(n_train=2000, n_val=500).val_examples]
    assert sum(t in train_texts for t in val_texts) <= 2  # chance collisions of random sequences only
    assert SyntheticDataModule(n_train=64, seed=1).train_examples != a.train_examples


def test_synthetic_batches_and_positions():
    dm = SyntheticDataModule(n_train=40, n_val=20, min_len=4, max_len=9, eval_batch_size=8)
    assert dm.num_labels == 2 and dm.label_names == ("even", "odd")
    assert dm.vocab_size == len(dm.tokenizer) == 29
    key_a = set(dm.tokenizer.convert_tokens_to_ids(list(KEY_A)))
    key_b = set(dm.tokenizer.convert_tokens_to_ids(list(KEY_B)))
    dm.setup("fit")
    row = 0
    for batch in dm.val_dataloader():
        assert batch["input_ids"].shape[1] == batch["attention_mask"].sum(1).max() <= 9 + 2
        assert batch["labels"].dtype == torch.int64
        for ids, mask, label in zip(batch["input_ids"], batch["attention_mask"], batch["labels"]):
            ex = dm.val_examples[row]
            i, j = ex.positions
            assert int(ids[i + 1]) in key_a and int(ids[j + 1]) in key_b  # +1 for [CLS]
            assert int(mask.sum()) == len(ex.words) + 2 and int(label) == ex.label
            row += 1
    assert row == 20 and dm.test_dataloader().dataset is dm.dataset("validation")


def test_synthetic_fits_the_classifier(tmp_path):
    from lightning_attattr.lightning.classifier import AttAttrClassifier

    dm = SyntheticDataModule(n_train=16, n_val=8, train_batch_size=8)
    config = dict(model_type="bert", vocab_size=dm.vocab_size, hidden_size=16, num_hidden_layers=1)
    config.update(num_attention_heads=2, intermediate_size=16)
    model = AttAttrClassifier(model_config=config, num_labels=dm.num_labels, task="synthetic")
    trainer = pl.Trainer(
        default_root_dir=tmp_path, logger=False, enable_progress_bar=False, enable_model_summary=False, max_epochs=1
    )
    trainer.fit(model, datamodule=dm)
    assert {"train/loss", "val/loss", "val/acc"} <= set(trainer.logged_metrics)


def test_synthetic_workers_and_tokenizer_round_trip(tmp_path):
    from transformers import AutoTokenizer

    dm = SyntheticDataModule(n_train=8, n_val=6, eval_batch_size=4, num_workers=1)
    assert [len(b["labels"]) for b in dm.val_dataloader()] == [4, 2]
    tok = AutoTokenizer.from_pretrained(dm.save_tokenizer(tmp_path / "tok"))
    text = dm.val_examples[0].text
    assert tok(text)["input_ids"] == dm.tokenizer(text)["input_ids"] == dm.dataset("validation")[0]["input_ids"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(n_train=0), "`n_train` to be an integer >= 1, but got 0"),
        (dict(n_val=-1), "`n_val` to be an integer >= 1, but got -1"),
        (dict(min_len=1), "`min_len` to be an integer >= 2, but got 1"),
        (dict(min_len=8, max_len=4), r"`max_len` to be an integer >= `min_len` \(8\), but got 4"),
        (dict(n_filler=0), "`n_filler` to be an integer >= 1, but got 0"),
        (dict(train_batch_size=0), "`train_batch_size` to be an integer >= 1, but got 0"),
        (dict(seed=None), "`seed` to be an integer, but got None"),
    ],
)
def test_synthetic_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        SyntheticDataModule(**kwargs)
    assert isinstance(info.value, UserError)
