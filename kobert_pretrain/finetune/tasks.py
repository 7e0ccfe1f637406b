"""Task files: tab-separated, a header row, one example per line; read, checked, labels mapped to ids.

    sentence-classification   NSMC:   id  document  label          (any number of classes)
    pair-classification       KorNLI: sentence1  sentence2  gold_label  (string labels)
    pair-regression           KorSTS: ...  score  sentence1  sentence2  (a number, e.g. 0-5)

The task is named or detected from the header (`auto`); column names are configurable for other files.
Class labels are mapped to ids in sorted order (numeric order when every label is an integer), from the
training file or from `finetune.labels`; dev and test reuse that mapping and may not hold other labels.
Every problem names the file and the line (the header is line 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from kobert_pretrain.errors import UserError

SENTENCE_CLASSIFICATION = "sentence-classification"
PAIR_CLASSIFICATION = "pair-classification"
PAIR_REGRESSION = "pair-regression"
TASKS = (SENTENCE_CLASSIFICATION, PAIR_CLASSIFICATION, PAIR_REGRESSION)

# (text, text pair, label) columns of each task's reference format; None = a single-sentence task.
DEFAULT_COLUMNS = {
    SENTENCE_CLASSIFICATION: ("document", None, "label"),
    PAIR_CLASSIFICATION: ("sentence1", "sentence2", "gold_label"),
    PAIR_REGRESSION: ("sentence1", "sentence2", "score"),
}


@dataclass(frozen=True)
class TaskSpec:
    """What a file holds: the task and the columns to read."""

    task: str
    text_column: str
    text_pair_column: str | None
    label_column: str

    @property
    def is_regression(self) -> bool:
        return self.task == PAIR_REGRESSION

    def columns(self) -> tuple[str, ...]:
        return tuple(c for c in (self.text_column, self.text_pair_column, self.label_column) if c)


@dataclass
class TaskData:
    """One file's examples; `labels` are class ids (classification) or floats (regression)."""

    path: Path
    texts: list[str]
    text_pairs: list[str] | None
    labels: list

    def __len__(self) -> int:
        return len(self.texts)


def task_spec(task: str, text_column: str = "", text_pair_column: str = "", label_column: str = "") -> TaskSpec:
    """The columns of a named task, with the configured names in place of the defaults."""
    text, pair, label = DEFAULT_COLUMNS[task]
    return TaskSpec(task, text_column or text, (text_pair_column or pair) if pair else None, label_column or label)


def read_header(path: str | Path) -> list[str]:
    """The column names of a task file (its first line)."""
    path = Path(path)
    lines = _lines(path)
    return _split_header(path, next(lines, (1, ""))[1])


def detect_task(path: str | Path, text_column: str = "", text_pair_column: str = "", label_column: str = "") -> str:
    """The one task whose columns the file's header holds."""
    header = set(read_header(path))
    matches = [t for t in TASKS if set(task_spec(t, text_column, text_pair_column, label_column).columns()) <= header]
    if len(matches) == 1:
        return matches[0]
    expected = "; ".join(f"{t}: {', '.join(task_spec(t, text_column, text_pair_column, label_column).columns())}"
                         for t in TASKS)
    if not matches:
        raise UserError(f"{path}: line 1: cannot tell the task from the header ({', '.join(sorted(header))}); "
                        f"expected the columns of one of {expected}; or give --task and the --finetune.*_column names")
    raise UserError(f"{path}: line 1: the header fits several tasks ({', '.join(matches)}); give --task")


def read_task_file(path: str | Path, spec: TaskSpec,
                   label_ids: dict[str, int] | None = None) -> tuple[TaskData, list[str]]:
    """Read one file as `spec` says; returns the examples and the raw label strings in file order.

    With `label_ids` (classification), labels are mapped with it and any other label is an error;
    without, labels are returned as strings in `labels` for the caller to map (see `label_mapping`).
    """
    path = Path(path)
    lines = _lines(path)
    first = next(lines, None)
    if first is None:
        raise UserError(f"{path}: the file is empty; expected a header row ({', '.join(spec.columns())})")
    header = _split_header(path, first[1])
    missing = [c for c in spec.columns() if c not in header]
    if missing:
        raise UserError(f"{path}: line 1: no column {', '.join(repr(c) for c in missing)} in the header "
                        f"({', '.join(header)}); the {spec.task} task reads {', '.join(spec.columns())}")
    index = {name: header.index(name) for name in spec.columns()}
    texts: list[str] = []
    pairs: list[str] | None = [] if spec.text_pair_column else None
    raw_labels: list[str] = []
    labels: list = []
    for number, line in lines:
        if line == "":
            continue  # a trailing newline, or blank lines: no example
        fields = line.split("\t")
        if len(fields) != len(header):
            raise UserError(f"{path}: line {number}: {len(fields)} tab-separated field(s), the header has "
                            f"{len(header)}")
        text = fields[index[spec.text_column]].strip()
        if not text:
            raise UserError(f"{path}: line {number}: empty text in column {spec.text_column!r}")
        texts.append(text)
        if pairs is not None:
            pair = fields[index[spec.text_pair_column]].strip()
            if not pair:
                raise UserError(f"{path}: line {number}: empty text in column {spec.text_pair_column!r}")
            pairs.append(pair)
        label = fields[index[spec.label_column]].strip()
        if not label:
            raise UserError(f"{path}: line {number}: empty label in column {spec.label_column!r}")
        raw_labels.append(label)
        if spec.is_regression:
            labels.append(_number(path, number, spec.label_column, label))
        elif label_ids is not None:
            if label not in label_ids:
                raise UserError(f"{path}: line {number}: label {label!r} is not one of the training labels "
                                f"({', '.join(label_ids)})")
            labels.append(label_ids[label])
        else:
            labels.append(label)
    if not texts:
        raise UserError(f"{path}: no examples after the header")
    return TaskData(path, texts, pairs, labels), raw_labels


def label_mapping(train_labels: list[str], configured: list[str] | None = None) -> list[str]:
    """Class labels in id order: the configured list, else the training labels sorted (as numbers if all are)."""
    seen = set(train_labels)
    if configured:
        unknown = sorted(seen - set(configured))
        if unknown:
            raise UserError(f"training labels {', '.join(map(repr, unknown))} are not in finetune.labels "
                            f"({', '.join(configured)})")
        return list(configured)
    if len(seen) < 2:
        raise UserError(f"the training file has a single label ({', '.join(seen)}); classification needs at least 2")
    if all(_is_int(label) for label in seen):
        return sorted(seen, key=int)
    return sorted(seen)


def read_task(spec: TaskSpec, train: str, dev: str, test: str = "", labels: list[str] | None = None,
              max_train_examples: int = 0):
    """(train, dev, test or None, class labels or None): every file read and checked once, up front."""
    train_data, raw = read_task_file(train, spec)
    if max_train_examples:
        train_data = TaskData(train_data.path, train_data.texts[:max_train_examples],
                              train_data.text_pairs[:max_train_examples] if train_data.text_pairs else None,
                              train_data.labels[:max_train_examples])
        raw = raw[:max_train_examples]
    names = None
    if not spec.is_regression:
        names = label_mapping(raw, labels)
        ids = {name: i for i, name in enumerate(names)}
        train_data.labels = [ids[label] for label in train_data.labels]
    ids = None if names is None else {name: i for i, name in enumerate(names)}
    dev_data = read_task_file(dev, spec, ids)[0]
    test_data = read_task_file(test, spec, ids)[0] if test else None
    return train_data, dev_data, test_data, names


def _lines(path: Path):
    """(line number, text) of a UTF-8 file, a byte-order mark and CRLF endings allowed."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise UserError(f"task file not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a directory, not a task file") from None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if not data.strip():
        return
    # split("\n"), not splitlines(): text may hold U+2028, \x1c or \x0b, which are no line ends in a TSV.
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise UserError(f"{path}: line {number}: not valid UTF-8 (convert the file first, e.g. "
                            "iconv -f cp949 -t utf-8)") from None
        yield number, line.removesuffix("\r")


def _split_header(path: Path, line: str) -> list[str]:
    header = [c.strip() for c in line.split("\t")]
    if len(header) < 2 or not all(header):
        raise UserError(f"{path}: line 1: expected a tab-separated header row, got {line[:80]!r}")
    if len(set(header)) != len(header):
        raise UserError(f"{path}: line 1: a column name appears twice in the header ({', '.join(header)})")
    return header


def _number(path: Path, number: int, column: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"{path}: line {number}: {column} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise UserError(f"{path}: line {number}: {column} {text!r} is not a finite number")
    return value


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True
