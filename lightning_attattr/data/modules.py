"""LightningDataModules for GLUE and for the synthetic planted-interaction task.

Both modules tokenize once in ``setup`` without padding, keep the token ids and labels of each split
in an in-memory :class:`datasets.Dataset` (no cache files are written) and pad each batch to its own
longest sequence with :class:`transformers.DataCollatorWithPadding`, which takes the pad token, pad
token type and padding side (right or left) from the tokenizer. Both are maintained together with
the tokenizers, so new tokenizer outputs and padding rules need no code here, and Arrow columns hold
the millions of token ids of QQP or MNLI far more compactly than Python lists. A batch is a plain
dict of int64 tensors: ``input_ids``, ``attention_mask`` (and ``token_type_ids`` when the tokenizer
produces them) of shape ``[batch, seq]`` and ``labels`` of shape ``[batch]``, which is what
:class:`~lightning_attattr.lightning.classifier.AttAttrClassifier` consumes. The raw texts stay
available through ``examples(split)`` for reports and attribution trees.

``num_labels`` and ``label_names`` are known right after ``__init__`` without any I/O, so
LightningCLI can link them into the model::

    parser.link_arguments("data.num_labels", "model.num_labels", apply_on="instantiate")

GLUE test labels are hidden, so ``test_dataloader`` (and ``predict_dataloader``) serve the
validation split(s), as the AttAttr paper evaluates on the dev sets.

Everything a user can get wrong (an argument, a missing ``data_dir`` or split file, a tokenizer that
cannot be loaded, the hub being unreachable, a malformed file) raises a
:class:`~lightning_attattr.core.checks.UserError` subclass whose message names the argument, file or
value, so the entry points print it as one line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding

from lightning_attattr.core.checks import (
    ArgumentError,
    ArgumentTypeError,
    DataFileError,
    PathNotFoundError,
    check_choice,
    check_existing_dir,
    check_int,
    check_pretrained_source,
    check_seed,
    looks_like_local_path,
)
from lightning_attattr.data.glue import GlueTask, get_task, read_glue_split, split_path
from lightning_attattr.data.synthetic import SyntheticExample, make_synthetic, synthetic_vocab
from lightning_attattr.lightning.compat import pl

if TYPE_CHECKING:
    import datasets
    from transformers import PreTrainedTokenizerBase

HUB_DATASET = "nyu-mll/glue"
"""Hugging Face hub dataset used when ``GlueDataModule(data_dir=None)``."""

# Our task name -> hub config name.
_HUB_CONFIGS: dict[str, str] = {
    "sst2": "sst2",
    "rte": "rte",
    "mrpc": "mrpc",
    "qqp": "qqp",
    "cola": "cola",
    "qnli": "qnli",
    "mnli": "mnli",
}
# Text columns of the hub configs, in (text_a, text_b) order.
_HUB_COLUMNS: dict[str, tuple[str, ...]] = {
    "sst2": ("sentence",),
    "cola": ("sentence",),
    "mrpc": ("sentence1", "sentence2"),
    "qqp": ("question1", "question2"),
    "rte": ("sentence1", "sentence2"),
    "qnli": ("question", "sentence"),
    "mnli": ("premise", "hypothesis"),
}
# Our label strings (``GlueTask.labels``) in the order of the hub's integer labels. Only MNLI
# differs from our order: the hub has entailment/neutral/contradiction = 0/1/2, the AttAttr code
# (and so ``GlueTask``) contradiction/entailment/neutral.
_HUB_LABELS: dict[str, tuple[str, ...]] = {
    "sst2": ("0", "1"),  # negative, positive
    "cola": ("0", "1"),  # unacceptable, acceptable
    "mrpc": ("0", "1"),  # not_equivalent, equivalent
    "qqp": ("0", "1"),  # not_duplicate, duplicate
    "rte": ("entailment", "not_entailment"),
    "qnli": ("entailment", "not_entailment"),
    "mnli": ("entailment", "neutral", "contradiction"),
}
_MIN_SEQ_LENGTH = 8
_SYNTHETIC_VAL_SEED_OFFSET = 1_000_003
_STAGES = ("fit", "validate", "test", "predict")
# Files of which a local tokenizer directory holds at least one (``save_pretrained`` writes
# tokenizer_config.json, plus tokenizer.json or the vocabulary files of slow tokenizers).
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "merges.txt")


def _first_line(error: BaseException) -> str:
    """The first line of ``error``'s message: library messages run over several lines, ours are one."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _load_tokenizer(model_name_or_path: str) -> PreTrainedTokenizerBase:
    """``AutoTokenizer.from_pretrained(model_name_or_path)`` with errors that say what to fix.

    A local path is checked before transformers sees it: a missing one would otherwise be taken for
    a malformed hub id ("Repo id must be in the form 'repo_name'..."), and a directory without
    tokenizer files (a model saved without its tokenizer) would silently load a tokenizer with an
    almost empty vocabulary.

    Raises:
        PathNotFoundError: a local path that does not exist, is a file, or holds no tokenizer files.
        DataFileError: a local directory whose tokenizer files cannot be loaded.
        ArgumentError: a hub name that cannot be loaded (no internet access, or no such model).
    """
    from transformers import AutoTokenizer

    name = "model_name_or_path"
    local = looks_like_local_path(model_name_or_path)
    if local:
        check_pretrained_source(name, model_name_or_path, required_file=None)  # exists, and is a directory
        directory = Path(model_name_or_path).expanduser()
        files = sorted(p.name for p in directory.iterdir())
        if not any(f in _TOKENIZER_FILES or f.endswith(".model") for f in files):
            raise PathNotFoundError(
                f"Expected `{name}`={model_name_or_path!r} to hold a tokenizer, but the directory has no tokenizer "
                f"files ({', '.join(_TOKENIZER_FILES)} or a sentencepiece *.model); it holds {files[:8]}"
                f"{' ...' if len(files) > 8 else ''}. Save the tokenizer there with `tokenizer.save_pretrained`."
            )
    try:
        return AutoTokenizer.from_pretrained(model_name_or_path)
    except Exception as err:
        if local:  # only the user's files are involved: any failure (JSON, KeyError, ...) is theirs
            raise DataFileError(
                f"Could not load the tokenizer in `{name}`={model_name_or_path!r}: "
                f"{type(err).__name__}: {_first_line(err)}"
            ) from err
        if not isinstance(err, (OSError, ValueError)):  # hub, network and cache errors are these; others are bugs
            raise
        raise ArgumentError(
            f"Could not load a tokenizer for `{name}`={model_name_or_path!r} from the Hugging Face hub "
            f"({type(err).__name__}: {_first_line(err)}). A hub name needs internet access (or the files in "
            "the local cache) and an existing model; otherwise pass a local model or tokenizer directory."
        ) from err


def _tokenized_dataset(encodings: Mapping[str, Sequence[Sequence[int]]], labels: Sequence[int]) -> datasets.Dataset:
    """An in-memory ``datasets.Dataset`` with one column per tokenizer output plus ``labels``.

    Args:
        encodings: tokenizer output without padding: ``{"input_ids": [[...], ...], ...}``, one
            list of ids per example (rows of different lengths).
        labels: one class index per example.
    """
    import datasets

    # from_dict builds an Arrow table in memory: nothing is written to the datasets cache.
    return datasets.Dataset.from_dict({**{key: list(rows) for key, rows in encodings.items()}, "labels": list(labels)})


@dataclass
class _DictCollatorWithPadding(DataCollatorWithPadding):
    """:class:`~transformers.DataCollatorWithPadding` that returns a plain ``dict``, not a ``BatchEncoding``.

    Lightning, the callbacks and user code index batches as dicts; a ``BatchEncoding`` is only
    dict-like (a ``UserDict``).
    """

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Tensor]:
        """Pad ``features`` into ``[batch, seq]`` int64 tensors plus ``labels`` ``[batch]``."""
        return dict(super().__call__(features))


# ----------------------------------------------------------------------------- data containers
@dataclass(frozen=True)
class TextExamples:
    """Raw texts and labels of one split, in file (or hub) order.

    Attributes:
        split: split name (``train``, ``validation``, ``validation_matched``, ...).
        text_a: first (or only) text of each example, verbatim.
        text_b: second text of pair tasks, ``None`` for single-sentence tasks.
        labels: class indices into the task's ``label_names``.
    """

    split: str
    text_a: list[str]
    text_b: list[str] | None
    labels: list[int]

    def __len__(self) -> int:
        return len(self.labels)


# ----------------------------------------------------------------------------- shared base
class _PaddedTextDataModule(pl.LightningDataModule):
    """Loaders, caching and collation shared by the GLUE and synthetic data modules."""

    def __init__(self, train_batch_size: int, eval_batch_size: int, num_workers: int, seed: int) -> None:
        super().__init__()
        check_int("train_batch_size", train_batch_size, 1)
        check_int("eval_batch_size", eval_batch_size, 1)
        check_int("num_workers", num_workers, 0)
        check_seed("seed", seed)
        self.train_batch_size = train_batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.seed = seed
        self._datasets: dict[str, datasets.Dataset] = {}

    def __str__(self) -> str:
        """The class name (Lightning's ``__str__`` builds every dataloader: tokenizer, data, downloads)."""
        return type(self).__name__

    # subclasses provide these
    @property
    def splits(self) -> tuple[str, ...]:
        """All split names: ``("train", *val_split_names)``."""
        return ("train", *self.val_split_names)

    @property
    def val_split_names(self) -> tuple[str, ...]:
        """Names of the validation splits, in the order of ``val_dataloader()``."""
        raise NotImplementedError

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The tokenizer (loaded on first use)."""
        raise NotImplementedError

    @property
    def max_length(self) -> int:
        """The longest token sequence a batch can hold, special tokens included."""
        raise NotImplementedError

    def _tokenize(self, split: str) -> datasets.Dataset:
        raise NotImplementedError

    def _check_split(self, split: str) -> None:
        check_choice("split", split, self.splits)

    def _stage_splits(self, stage: str | None) -> tuple[str, ...]:
        """The splits ``stage`` reads: all for ``fit`` (and ``None``), the validation split(s) otherwise."""
        if stage is not None:
            check_choice("stage", stage, _STAGES)
        return self.splits if stage in (None, "fit") else self.val_split_names

    # common machinery
    def check_files(self, stage: str | None = None) -> None:
        """Raise if the data that ``stage`` needs is missing; nothing to check for generated data.

        Raises:
            ArgumentError: ``stage`` is not ``fit``, ``validate``, ``test``, ``predict`` or ``None``.
        """
        self._stage_splits(stage)

    def setup(self, stage: str | None = None) -> None:
        """Tokenize the splits ``stage`` needs (train and validation for ``fit``, else validation)."""
        self.check_files(stage)
        for split in self._stage_splits(stage):
            self.dataset(split)

    def dataset(self, split: str) -> datasets.Dataset:
        """The tokenized ``split`` (tokenized on first use, then cached).

        Returns:
            An in-memory ``datasets.Dataset``: ``len()`` is the number of examples, and item ``i``
            is a dict of unpadded id lists (``input_ids``, ``attention_mask``, ...) and an int ``labels``.

        Raises:
            ArgumentError: unknown split (the message lists the known ones).
        """
        self._check_split(split)
        if split not in self._datasets:
            self._datasets[split] = self._tokenize(split)
        return self._datasets[split]

    @property
    def collator(self) -> DataCollatorWithPadding:
        """Collate function that pads each batch to its longest sequence, as the tokenizer pads.

        Padding uses the tokenizer's ``pad_token_id``, ``pad_token_type_id`` and ``padding_side``;
        the attention mask is 0 on padding. It is picklable, so it works with ``num_workers > 0``.

        Raises:
            ArgumentError: the tokenizer has no padding token.
        """
        tok = self.tokenizer
        if tok.pad_token_id is None:
            raise ArgumentError(
                f"Expected the tokenizer ({type(tok).__name__}) to have a padding token to pad batches, but "
                "`pad_token_id` is None: save the tokenizer with a pad token (e.g. `tokenizer.pad_token = "
                "tokenizer.eos_token`) and pass its directory."
            )
        return _DictCollatorWithPadding(tok)

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(
            self.dataset(split),
            batch_size=batch_size,
            shuffle=shuffle,
            generator=generator,
            num_workers=self.num_workers,
            collate_fn=self.collator,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches; the order depends only on ``seed`` (and the epoch).

        Under DDP, Lightning swaps in a ``DistributedSampler`` that shuffles with its own seed
        (set it with ``seed_everything``).
        """
        return self._loader("train", self.train_batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """Validation batches in file order; a list of loaders (``val_split_names``) for MNLI."""
        loaders = [self._loader(split, self.eval_batch_size, shuffle=False) for split in self.val_split_names]
        return loaders[0] if len(loaders) == 1 else loaders

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        """The validation loader(s): GLUE test labels are hidden, so ``test`` evaluates the dev sets."""
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader | list[DataLoader]:
        """The validation loader(s), unshuffled, for attribution passes through ``trainer.predict``."""
        return self.val_dataloader()


# ----------------------------------------------------------------------------- GLUE
class GlueDataModule(_PaddedTextDataModule):
    """A GLUE task from a local copy in the standard layout or from the Hugging Face hub.

    Local files are read with :func:`~lightning_attattr.data.glue.read_glue_split` (texts verbatim:
    no quote or NA processing). Without ``data_dir`` the task comes from the hub dataset
    ``nyu-mll/glue``; its labels are mapped to this package's label order (they differ for MNLI).
    Texts are tokenized once, truncated to ``max_seq_length`` and padded per batch.

    Args:
        task_name: GLUE task: ``sst2``, ``rte``, ``mrpc``, ``qqp``, ``cola``, ``qnli`` or ``mnli``
            (case-insensitive; ``SST-2`` works too).
        model_name_or_path: tokenizer source for ``AutoTokenizer.from_pretrained``: a hub name
            (needs internet) or a local directory. Loaded on first use, never at import or in
            ``__init__``; required for anything that tokenizes.
        data_dir: local GLUE root holding ``SST-2/``, ``RTE/``, ... (or the task's own folder).
            ``None`` loads the task from the hub.
        max_seq_length: truncate every example (both texts of a pair together) to this many tokens.
        train_batch_size: training batch size.
        eval_batch_size: validation/test batch size.
        num_workers: ``DataLoader`` worker processes.
        max_train_samples: keep only the first N training examples (``None``: all).
        max_eval_samples: keep only the first N examples of each validation split (``None``: all).
        seed: seed of the training shuffle.

    Raises:
        ArgumentError: an argument out of range or an unknown task (the message names the argument,
            the allowed values and what was given).
        ArgumentTypeError: an argument of the wrong type.
        PathNotFoundError: ``data_dir`` is not an existing directory.
    """

    def __init__(
        self,
        task_name: str = "sst2",
        model_name_or_path: str | None = None,
        data_dir: str | None = None,
        max_seq_length: int = 128,
        train_batch_size: int = 32,
        eval_batch_size: int = 64,
        num_workers: int = 0,
        max_train_samples: int | None = None,
        max_eval_samples: int | None = None,
        seed: int = 42,
    ) -> None:
        super().__init__(train_batch_size, eval_batch_size, num_workers, seed)
        self.task: GlueTask = get_task(task_name)
        if model_name_or_path is not None and (not isinstance(model_name_or_path, str) or not model_name_or_path):
            error = ArgumentError if isinstance(model_name_or_path, str) else ArgumentTypeError
            raise error(
                "Expected `model_name_or_path` to be a hub name or a local tokenizer directory (a non-empty "
                f"string) or None, but got {model_name_or_path!r}."
            )
        if data_dir is not None:
            layout = f"{self.task.directory}/{self.task.splits['train']}.tsv, ..."
            check_existing_dir("data_dir", data_dir, f"an existing directory with the standard GLUE layout ({layout})")
        check_int("max_seq_length", max_seq_length, _MIN_SEQ_LENGTH)
        check_int("max_train_samples", max_train_samples, 1, optional=True)
        check_int("max_eval_samples", max_eval_samples, 1, optional=True)
        self.save_hyperparameters()
        self.task_name = self.task.name
        self.model_name_or_path = model_name_or_path
        self.data_dir = data_dir
        self.max_seq_length = max_seq_length
        self.max_train_samples = max_train_samples
        self.max_eval_samples = max_eval_samples
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._examples: dict[str, TextExamples] = {}
        self._hub: Any = None

    # ------------------------------------------------------------- metadata (no I/O)
    @property
    def num_labels(self) -> int:
        """Number of classes of the task (link it to ``model.num_labels``)."""
        return self.task.num_labels

    @property
    def label_names(self) -> tuple[str, ...]:
        """The task's label strings in class-index order, as in the GLUE files (``("0", "1")`` for SST-2)."""
        return self.task.labels

    @property
    def val_split_names(self) -> tuple[str, ...]:
        """``("validation",)``, or ``("validation_matched", "validation_mismatched")`` for MNLI."""
        return tuple(split for split in self.task.splits if split != "train")

    @property
    def max_length(self) -> int:
        """The longest token sequence a batch can hold: ``max_seq_length`` (texts are truncated to it)."""
        return self.max_seq_length

    # ------------------------------------------------------------- loading
    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The tokenizer of ``model_name_or_path`` (loaded on first use).

        Raises:
            ArgumentError: ``model_name_or_path`` is ``None``, or a hub name that cannot be loaded
                (no internet access, or no such model).
            PathNotFoundError: a local path that does not exist or holds no tokenizer files.
            DataFileError: a local tokenizer whose files cannot be loaded.
        """
        if self._tokenizer is None:
            if self.model_name_or_path is None:
                raise ArgumentError(
                    "Expected `model_name_or_path` to name a tokenizer (hub name or local directory) to "
                    "tokenize GLUE, but got None."
                )
            self._tokenizer = _load_tokenizer(self.model_name_or_path)
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> None:
        """Use an already loaded tokenizer (e.g. the one stored in a checkpoint) instead of ``model_name_or_path``."""
        self._tokenizer = tokenizer
        self._datasets.clear()  # splits tokenized before must be tokenized again with this tokenizer

    def check_files(self, stage: str | None = None) -> None:
        """Raise unless the split files ``stage`` reads exist under ``data_dir`` and parse (hub data: nothing).

        ``fit`` (and ``None``) reads the train and validation split(s); ``validate``, ``test`` and
        ``predict`` read the validation split(s) only. The files are read (encoding, columns, labels;
        kept for later use), so that a bad file fails before any tokenizer or model is loaded.
        Called at the start of ``prepare_data`` and ``setup``, and by the command line as soon as
        the data module is built.

        Args:
            stage: ``fit``, ``validate``, ``test``, ``predict`` or ``None`` (every split).

        Raises:
            ArgumentError: unknown ``stage``.
            PathNotFoundError: a split file is missing (the message names the stage and the files).
            DataFileError: a split file does not parse (the message names the file, line and value).
        """
        splits = self._stage_splits(stage)
        if self.data_dir is None:
            return
        missing = []
        for split in splits:
            try:
                split_path(self.data_dir, self.task, split)
            except PathNotFoundError:
                missing.append(split)
        if missing:
            root = Path(self.data_dir)
            files = [f"{self.task.splits[split]}.tsv" for split in missing]
            needs = f"`{stage}` needs" if stage is not None else "Reading every split needs"
            raise PathNotFoundError(
                f"{needs} the {' and '.join(missing)} split{'s' if len(missing) > 1 else ''} of GLUE task "
                f"{self.task.name!r}, but `data_dir`={str(self.data_dir)!r} has no {' or '.join(files)}: looked in "
                f"{str(root / self.task.directory)!r} and {str(root)!r}."
            )
        for split in splits:
            self.examples(split)

    def prepare_data(self) -> None:
        """Download the hub dataset and the tokenizer into the caches (rank 0 only; no state is kept).

        Raises:
            PathNotFoundError: a split file the trainer's stage needs is missing under ``data_dir``, or
                a local tokenizer path does not exist or holds no tokenizer files.
            ArgumentError: the hub dataset or a hub tokenizer cannot be loaded.
            DataFileError: a local tokenizer's files cannot be loaded.
        """
        # prepare_data gets no stage: take it from the trainer (fit, validate, ...) when attached.
        fn = self.trainer.state.fn if self.trainer is not None else None
        self.check_files(None if fn is None else str(fn.value))
        if self.data_dir is None:
            self._download_hub()
        if self.model_name_or_path is not None and self._tokenizer is None:  # a given tokenizer needs no download
            _load_tokenizer(self.model_name_or_path)

    def _download_hub(self) -> Any:
        """Load the task's ``DatasetDict`` from the hub (or the ``datasets`` cache).

        Raises:
            ArgumentError: the hub is unreachable or the dataset fails to load (the message says to
                pass ``data_dir``).
        """
        import datasets

        config = _HUB_CONFIGS[self.task.name]
        try:
            return datasets.load_dataset(HUB_DATASET, config)
        except Exception as err:  # network, auth, cache or schema errors all end up here
            raise ArgumentError(
                f"Could not load GLUE task {self.task.name!r} from the Hugging Face hub "
                f"({HUB_DATASET!r}, config {config!r}): {type(err).__name__}: {_first_line(err)}. Without "
                "internet access, pass `data_dir` pointing to a local GLUE copy in the standard layout "
                "(e.g. data_dir='../shared/data/glue')."
            ) from err

    def _load_hub(self) -> Any:
        """The hub ``DatasetDict`` of the task, loaded once per process."""
        if self._hub is None:
            self._hub = self._download_hub()
        return self._hub

    def _read_hub(self, split: str) -> TextExamples:
        hub = self._load_hub()
        if split not in hub:
            raise DataFileError(f"The hub dataset {HUB_DATASET!r} has no split {split!r}; it has {sorted(hub)}.")
        data = hub[split]
        columns = _HUB_COLUMNS[self.task.name]
        missing = [c for c in (*columns, "label") if c not in data.column_names]
        if missing:
            raise DataFileError(
                f"The hub split {split!r} of {self.task.name!r} has no column {missing[0]!r}; "
                f"its columns are {data.column_names}."
            )
        limit = self.max_train_samples if split == "train" else self.max_eval_samples
        if limit is not None and limit < len(data):
            data = data.select(range(limit))
        order = _HUB_LABELS[self.task.name]
        names = getattr(data.features["label"], "names", None)
        if names is not None and set(names) <= set(self.task.labels):
            order = tuple(names)  # ClassLabel names are our label strings (NLI tasks): map by name
        to_ours = [self.task.labels.index(label) for label in order]
        labels = []
        for row, value in enumerate(data["label"]):
            if not 0 <= int(value) < len(to_ours):
                raise DataFileError(
                    f"Hub split {split!r} of {self.task.name!r}, row {row}: label {value!r} is not in "
                    f"[0, {len(to_ours) - 1}] (-1 marks the hidden labels of GLUE test sets)."
                )
            labels.append(to_ours[int(value)])
        text_a = [str(t) for t in data[columns[0]]]
        text_b = [str(t) for t in data[columns[1]]] if len(columns) > 1 else None
        return TextExamples(split, text_a, text_b, labels)

    def _read_local(self, split: str) -> TextExamples:
        assert self.data_dir is not None
        raw = read_glue_split(self.data_dir, self.task, split)
        limit = self.max_train_samples if split == "train" else self.max_eval_samples
        cut = slice(None) if limit is None else slice(limit)
        text_b = None if raw.text_b is None else raw.text_b[cut]
        return TextExamples(split, raw.text_a[cut], text_b, raw.labels[cut])

    def examples(self, split: str) -> TextExamples:
        """Raw texts and labels of ``split`` after ``max_*_samples`` (read on first use; no tokenizer needed).

        Args:
            split: ``train`` or one of ``val_split_names``.

        Returns:
            The split's :class:`TextExamples`, in the same order as the tokenized dataset.

        Raises:
            ArgumentError: unknown split, or the hub dataset cannot be loaded.
            DataFileError: malformed data (the message names the file, line and value).
            PathNotFoundError: the split's file is missing under ``data_dir``.
        """
        self._check_split(split)
        if split not in self._examples:
            self._examples[split] = self._read_hub(split) if self.data_dir is None else self._read_local(split)
        return self._examples[split]

    def _tokenize(self, split: str) -> datasets.Dataset:
        ex = self.examples(split)
        texts = (ex.text_a,) if ex.text_b is None else (ex.text_a, ex.text_b)
        # no padding here: the collator pads each batch to its own longest row
        encodings = self.tokenizer(*texts, truncation=True, max_length=self.max_seq_length)
        return _tokenized_dataset(encodings, ex.labels)


# ----------------------------------------------------------------------------- synthetic
class SyntheticDataModule(_PaddedTextDataModule):
    """The synthetic XOR task of :mod:`lightning_attattr.data.synthetic`, with its word-level tokenizer.

    The training set is ``make_synthetic(n_train, seed)``; the validation set uses the derived
    seed ``seed + 1_000_003`` so that it is a different sample. Each :class:`SyntheticExample`
    records the word positions of its two interacting words; in the tokenized sequences (``[CLS]
    words [SEP]``) they sit at ``positions[0] + 1`` and ``positions[1] + 1``.

    Args:
        n_train: number of training examples.
        n_val: number of validation examples.
        seed: seed of the training data and of the training shuffle.
        min_len: shortest sequence in words (>= 2).
        max_len: longest sequence in words (>= ``min_len``).
        n_filler: size of the filler vocabulary.
        train_batch_size: training batch size.
        eval_batch_size: validation batch size.
        num_workers: ``DataLoader`` worker processes.

    Raises:
        ArgumentError: an argument out of range (the message names it).
        ArgumentTypeError: an argument of the wrong type.

    Example:
        >>> dm = SyntheticDataModule(n_train=8, n_val=4, train_batch_size=4)
        >>> dm.num_labels, dm.label_names, dm.vocab_size
        (2, ('even', 'odd'), 29)
        >>> batch = next(iter(dm.train_dataloader()))
        >>> sorted(batch), batch["labels"].dtype, dm.max_length
        (['attention_mask', 'input_ids', 'labels', 'token_type_ids'], torch.int64, 18)
    """

    def __init__(
        self,
        n_train: int = 2000,
        n_val: int = 500,
        seed: int = 0,
        min_len: int = 8,
        max_len: int = 16,
        n_filler: int = 20,
        train_batch_size: int = 32,
        eval_batch_size: int = 128,
        num_workers: int = 0,
    ) -> None:
        super().__init__(train_batch_size, eval_batch_size, num_workers, seed)
        check_int("n_train", n_train, 1)
        check_int("n_val", n_val, 1)
        make_synthetic(0, seed, min_len=min_len, max_len=max_len, n_filler=n_filler)  # validates the rest
        self.save_hyperparameters()
        self.n_train = n_train
        self.n_val = n_val
        self.min_len = min_len
        self.max_len = max_len
        self.n_filler = n_filler
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._examples: dict[str, list[SyntheticExample]] = {}

    @property
    def num_labels(self) -> int:
        """Two classes."""
        return 2

    @property
    def label_names(self) -> tuple[str, ...]:
        """``("even", "odd")``: the parity of the number of ``*1`` key words (label = A xor B)."""
        return ("even", "odd")

    @property
    def vocab_size(self) -> int:
        """Size of the word-level vocabulary (specials, key words, fillers); link it into the model config."""
        return len(synthetic_vocab(self.n_filler))

    @property
    def val_split_names(self) -> tuple[str, ...]:
        """``("validation",)``."""
        return ("validation",)

    @property
    def max_length(self) -> int:
        """The longest token sequence a batch can hold: ``max_len`` words plus ``[CLS]`` and ``[SEP]``."""
        return self.max_len + 2

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The word-level :func:`~lightning_attattr.data.synthetic.synthetic_tokenizer` (built on first use)."""
        if self._tokenizer is None:
            from lightning_attattr.data.synthetic import synthetic_tokenizer

            self._tokenizer = synthetic_tokenizer(self.n_filler)
        return self._tokenizer

    def examples(self, split: str) -> list[SyntheticExample]:
        """The examples of ``split`` (``train`` or ``validation``), generated on first use.

        Raises:
            ArgumentError: unknown split.
        """
        self._check_split(split)
        if split not in self._examples:
            n, seed = (self.n_train, self.seed) if split == "train" else (self.n_val, self.val_seed)
            self._examples[split] = make_synthetic(
                n, seed, min_len=self.min_len, max_len=self.max_len, n_filler=self.n_filler
            )
        return self._examples[split]

    @property
    def val_seed(self) -> int:
        """Seed of the validation examples: ``seed + 1_000_003``."""
        return self.seed + _SYNTHETIC_VAL_SEED_OFFSET

    @property
    def train_examples(self) -> list[SyntheticExample]:
        """The training examples."""
        return self.examples("train")

    @property
    def val_examples(self) -> list[SyntheticExample]:
        """The validation examples, in ``val_dataloader()`` order."""
        return self.examples("validation")

    def _tokenize(self, split: str) -> datasets.Dataset:
        data = self.examples(split)
        encodings = self.tokenizer([ex.text for ex in data])  # unpadded; the collator pads per batch
        return _tokenized_dataset(encodings, [ex.label for ex in data])

    def save_tokenizer(self, path: str | Path) -> Path:
        """Save the tokenizer with ``save_pretrained`` (reload it with ``AutoTokenizer.from_pretrained``).

        Args:
            path: target directory (created if missing).

        Returns:
            The directory as a ``Path``.
        """
        path = Path(path)
        self.tokenizer.save_pretrained(str(path))
        return path
