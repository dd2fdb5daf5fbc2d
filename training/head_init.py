"""``--head-init``: start the new head from the pretrained classifier's rows for the dataset's
classes, when those classes are among the ones the weights were trained on.

Why: a new head learned from a few hundred photos is a worse estimate of "ant" than the row
ImageNet's 1,300 ant photos taught the pretrained classifier. On hymenoptera, the ImageNet
EfficientNet-Lite0 restricted to its ``ant`` and ``bee`` logits answers 149 of the 153 val
photos before any training, while LP-FT from a fresh head lands at 144-146 (BENCHMARKS.md).
Scoring a pretrained model on a subset of its classes by keeping those logits is how the
ImageNet-A and -R benchmarks are run on 1000-class models (timm ships their 200 row indices in
``timm/data/_info``); here the kept rows become the new head's initialisation and fine-tuning
goes on from them.

Mapping syntax (``--head-init``):

- ``new``: a freshly initialised head (the default).
- ``auto``: each class folder's name matched to one label of the pretrained head: a label's
  comma-separated synonyms (ImageNet's ``ant, emmet, pismire``), compared case-insensitively
  with ``_`` and ``-`` read as spaces; a name with no match is tried once more without a
  plural ``s``/``es`` (``bees`` -> ``bee``).
- ``CLASS=LABEL,...``: the same per class, LABEL a synonym, a WordNet id (``n02219486``) or a
  row index (``310``).

Every class must map to exactly one distinct row, or the run stops with one line naming
the classes that did not (an ambiguous synonym like ImageNet's two ``crane`` rows lists
both indices). Label names are known for 1000-row (ImageNet-1k) heads, through timm's
``ImageNetInfo``; other heads take indices only.
"""

from dataclasses import dataclass

import torch
from torch import nn

from slimserve.errors import SlimserveError
from training import backbones
from training.config import HEAD_AUTO, head_init_pairs

IMAGENET_ROWS = 1000


def _words(text: str) -> str:
    return " ".join(text.lower().replace("_", " ").replace("-", " ").split())


@dataclass(frozen=True)
class LabelSet:
    """The pretrained head's rows by name: synonyms and WordNet ids (ImageNet-1k), or none."""

    rows: int
    synonyms: dict[str, list[int]]  # a synonym -> every row that lists it
    ids: dict[str, int]
    descriptions: list[str]

    @classmethod
    def for_head(cls, rows: int) -> "LabelSet":
        if rows != IMAGENET_ROWS:
            return cls(rows, {}, {}, [str(i) for i in range(rows)])
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        descriptions = [info.index_to_description(i) for i in range(rows)]
        synonyms: dict[str, list[int]] = {}
        for row, description in enumerate(descriptions):
            for synonym in description.split(","):
                synonyms.setdefault(_words(synonym), []).append(row)
        ids = {info.index_to_label_name(i): i for i in range(rows)}
        return cls(rows, synonyms, ids, descriptions)

    def lookup(self, label: str, plural: bool = False) -> list[int]:
        """Rows ``label`` names: an index, a WordNet id or a synonym (``plural``: also without s/es)."""
        text = label.strip()
        if text.isdigit():
            return [int(text)] if int(text) < self.rows else []
        if text in self.ids:
            return [self.ids[text]]
        words = _words(text)
        rows = self.synonyms.get(words, [])
        if not rows and plural:
            for suffix in ("es", "s"):
                if words.endswith(suffix) and (rows := self.synonyms.get(words[: -len(suffix)], [])):
                    break
        return rows


def resolve(value: str, classes: list[str], labels: LabelSet) -> list[int]:
    """The pretrained row for each of ``classes``, in class order, or one error naming every miss."""
    if value == HEAD_AUTO:
        wanted = {name: labels.lookup(name, plural=True) for name in classes}
    else:
        split = head_init_pairs(value)
        pairs = dict(split)
        if len(pairs) < len(split):
            raise SlimserveError(
                f"--head-init {value}: a class is named twice; name each of the classes of this dataset "
                f"({', '.join(classes)}) once"
            )
        unknown = sorted(set(pairs) - set(classes))
        if unknown:
            raise SlimserveError(
                f"--head-init names {', '.join(unknown)}, not classes of this dataset ({', '.join(classes)})"
            )
        wanted = {name: labels.lookup(pairs[name]) if name in pairs else [] for name in classes}
    problems = []
    for name, rows in wanted.items():
        if not rows:
            problems.append(
                f"{name}: no label" + ("" if labels.synonyms else " (this head takes row indices)")
            )
        elif len(rows) > 1:
            problems.append(f"{name}: ambiguous, rows {', '.join(map(str, rows))}")
    chosen = [rows[0] for rows in wanted.values() if len(rows) == 1]
    if not problems and len(set(chosen)) < len(chosen):
        problems.append("two classes map to the same row")
    if problems:
        raise SlimserveError(
            f"--head-init {value}: {'; '.join(problems)}; give every class its row, e.g. --head-init "
            + ",".join(f"{name}=LABEL" for name in classes)
        )
    return chosen


def initialize(new_head: nn.Module, pretrained_head: nn.Module, rows: list[int]) -> None:
    """Copy the pretrained classifier's weight and bias rows into the new head, in class order."""
    with torch.no_grad():
        new_head.weight.copy_(pretrained_head.weight[rows])
        if new_head.bias is not None and pretrained_head.bias is not None:
            new_head.bias.copy_(pretrained_head.bias[rows])


def with_head_from(pretrained: nn.Module, classes: list[str], value: str) -> tuple[nn.Module, dict[str, str]]:
    """``pretrained`` with its head replaced for ``classes``, the rows taken from the old head;
    and, for the metadata, each class's row and label."""
    old = backbones.get_head(pretrained)
    labels = LabelSet.for_head(old.weight.shape[0])
    rows = resolve(value, classes, labels)
    model = backbones.replace_head(pretrained, len(classes))
    initialize(backbones.get_head(model), old, rows)
    return model, {
        name: f"{row}: {labels.descriptions[row]}" for name, row in zip(classes, rows, strict=True)
    }
