"""A trained model read back from its file: its card alone (:func:`read_card`) or the model with its card
(:func:`load_member`), whether a network's ``.ckpt`` (``ml/checkpoint.py``, built by ``ml/models.py``) or a
random forest's ``.joblib`` (``ml/forest.py``).

Above those three modules, so none of them imports another back.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from torchbearer.ml.checkpoint import (
    CARD_KEY,
    FOREST_SUFFIX,
    CheckpointError,
    ModelCard,
    read_checkpoint,
    state_dict_of,
)

if TYPE_CHECKING:
    import torch
    from torch import nn


def read_card(path: Path) -> ModelCard:
    """The model card of a checkpoint file (a network's ``.ckpt``, or a random forest's ``.joblib``)."""
    if Path(path).suffix == FOREST_SUFFIX:
        from torchbearer.ml.forest import load_forest

        return load_forest(Path(path))[1]
    return ModelCard.from_dict(read_checkpoint(path).get(CARD_KEY), str(path))


def load_member(path: Path, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelCard]:
    """The model of a torchbearer checkpoint, on ``device`` in eval mode, and its card."""
    from torchbearer.ml.models import ModelError, build_model

    path = Path(path)
    if path.suffix == FOREST_SUFFIX:  # a classical model on pixels (``ml/forest.py``), not a network's tensors
        from torchbearer.ml.forest import load_forest

        return load_forest(path)
    checkpoint = read_checkpoint(path)
    card = ModelCard.from_dict(checkpoint.get(CARD_KEY), str(path))
    try:
        model = build_model(card.arch, card.backbone, card.in_channels, card.out_channels)
    except ModelError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    try:
        model.load_state_dict(state_dict_of(checkpoint, path))
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit {card.arch}/{card.backbone}: {exc}") from exc
    return model.to(device).eval(), card
