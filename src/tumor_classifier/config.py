"""Class names, the training configuration and its JSON round-trip."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The three classes of the task, in the order the model outputs them when the dataset uses
# these folder names. Other folder names work too; their sorted order is then recorded.
CLASS_NAMES: tuple[str, ...] = ("BEN", "CAN", "NOR")

# The split folders of a prepared dataset: DATA/{train,validation,test}/{CLASS}/...
SPLITS = ("train", "validation", "test")
# The names datasets give their splits, matched case-insensitively, the first found winning:
# Keras tutorials and many public sets say "training", "val" or "valid".
SPLIT_NAMES = {"train": ("train", "training"), "validation": ("validation", "val", "valid"),
               "test": ("test", "testing")}

CLASS_DESCRIPTIONS = {
    "BEN": "Benign finding",
    "CAN": "Malignant finding",
    "NOR": "No finding (normal)",
}

# Folder names that mean each class, in any case: public breast-imaging sets name their
# class folders benign/malignant/normal (breast ultrasound) as often as BEN/CAN/NOR. The
# clinical questions (CAN vs rest, abnormal vs normal), the normal class of lesion-patch
# pretraining and mammo_mil, and the decision in words find their class by these.
CLASS_SYNONYMS = {
    "BEN": ("ben", "benign"),
    "CAN": ("can", "malignant", "cancer"),
    "NOR": ("nor", "normal"),
}


def class_index(class_names: Sequence[str], role: str) -> int | None:
    """The position in `class_names` of the one class that means `role` (BEN, CAN or NOR,
    `CLASS_SYNONYMS`), or None when no class, or more than one, does."""
    found = [index for index, name in enumerate(class_names)
             if name.strip().lower() in CLASS_SYNONYMS[role]]
    return found[0] if len(found) == 1 else None


def describe_class(name: str) -> str:
    """The decision in words ("Malignant finding") for a class name, or the name itself."""
    for role, description in CLASS_DESCRIPTIONS.items():
        if class_index([name], role) is not None:
            return description
    return name


def default_image_size(model: str) -> int:
    """A preset's input side when --image-size is not given (`model` chosen, not "auto").

    `seed` keeps the original project's 128: with the breast crop and the other breast,
    5-fold CV by woman over five seeds scored the same at 128 as at 256 on mini-MIAS films
    (macro AUC -0.000 +- 0.028), better on lesion-sized patches of them (macro AUC
    +0.039 +- 0.034, balanced accuracy +0.048 +- 0.035), and trains 2.5 times faster
    (README, "Which input size"). The other presets, with global pooling, were measured
    at 256. `seed_asymmetry` takes 512: its seed branch sees a quarter of it (128), its
    ImageNet probe 128, 256, 384 and 512, the four sizes it was measured at.
    """
    return {"seed": 128, "seed_asymmetry": 512}.get(model, 256)


@dataclass(frozen=True)
class TrainConfig:
    """Everything `train` needs; each field is one `tumor-classifier train` flag."""

    data_dir: str
    out: str
    # Model preset, see `models.PRESETS` ("seed" is the original project's CNN), or "auto"
    # (the default): `seed_asymmetry` (seed with the other breast, and a frozen ImageNet
    # probe on their difference) where every training and validation film's other breast
    # is named, `efficientnet_lite0` from ImageNet weights otherwise
    # (`options.choose_model`; config.json records the choice).
    model: str = "auto"
    # Square side the image is resized to; None: the preset's own (`default_image_size`).
    image_size: int | None = None
    # 1 = grayscale (mammograms), 3 = the grey image repeated (for RGB backbones).
    channels: int = 1
    # Pretrained presets only: "imagenet" (the default for them: downloaded by Keras for
    # efficientnet_b0, from the installed `pretrained` extra for efficientnet_lite0), a
    # weights file for offline use, or "none" (random initialisation).
    weights: str | None = None
    # Crop to the breast, flip it to one orientation and pad to a square before resizing
    # (preprocessing.crop_breast; images without background around them are left whole);
    # --no-crop-breast stretches the whole image, as the original did.
    crop_breast: bool = True
    # Give the model the same woman's other breast (same view) as further input channels,
    # named by split.csv's other_breast column: radiologists compare the two breasts.
    # None (the default): on when split.csv names the other breast of every training and
    # validation film and the preset trains from scratch on whole images; off otherwise
    # (plain class folders say nothing of pairs). Measured on mini-MIAS in the README.
    other_breast: bool | None = None
    # None: 10 (the original project's count), or 20 when a preset starts from pretrained
    # weights: fine-tuning at a tenth of the rate takes more steps (README, "How long to
    # fine-tune").
    epochs: int | None = None
    batch_size: int = 32
    # None: 1e-3, or 1e-4 when a preset starts from pretrained weights (fine-tuning at a
    # tenth of the rate keeps the ImageNet features instead of overwriting them).
    learning_rate: float | None = None
    # "balanced" (inverse class frequency), "none", or explicit "BEN=5,CAN=5,NOR=1".
    class_weight: str = "balanced"
    # "shuffle" (every image once per pass) or "balanced" (each pass draws images with
    # replacement, every class equally likely; class weights are then not applied).
    sampling: str = "shuffle"
    # "float32", or "mixed": float16 compute on GPUs, bfloat16 elsewhere (train.py).
    precision: str = "float32"
    # "crossentropy" or "focal" (focal loss, gamma 2; class weights still apply).
    loss: str = "crossentropy"
    # Label smoothing (Szegedy et al., 2016): the one-hot target becomes 1 - e + e / k for
    # its class and e / k for the other k - 1, which keeps the logits from growing without
    # bound on a few hundred images. None: 0.1 (the common choice, not tuned here) from
    # scratch, since 2026-12-07; 0 (off) when fine-tuning pretrained weights, where it
    # lowered balanced accuracy on lesion patches (README, "Label smoothing").
    label_smoothing: float | None = None
    # "constant" or "cosine" (the rate decays along a cosine to 0 over all epochs).
    lr_schedule: str = "constant"
    # None = one pass over the data per epoch / over the whole validation split.
    steps_per_epoch: int | None = None
    validation_steps: int | None = None
    # Which epoch the run keeps: "last" (as the original project did) or "best" (the
    # lowest validation loss). With tens of validation films the lowest validation loss
    # is a noisy choice; "last" measured better by 5-fold CV on mini-MIAS (README).
    keep: str = "last"
    # Early stopping on validation loss (patience in epochs); None trains all epochs.
    patience: int | None = None
    seed: int = 0
    # Train even if some images cannot be read (they are listed in config.json), instead
    # of refusing to start.
    skip_unreadable: bool = False
    # Processes that decode images; 0 = one per CPU core.
    workers: int = 0
    # Epochs of lesion-patch pretraining before whole-image training (patches.py): needs
    # DATA_DIR/annotations.csv (without it, a warning and whole images only) and a preset
    # with a global-pooling head; mammo_mil adds hard-negative mining. 0 = off.
    patch_pretrain_epochs: int = 0
    # "none" or "data-parallel": the global batch split over all devices (distribute.py).
    distribute: str = "none"
    # Where decoded images are cached (None: $TUMOR_CLASSIFIER_CACHE or ~/.cache/...).
    cache_dir: str | None = None
    # Continue an interrupted run in `out` from its last finished epoch (the same options;
    # Keras' BackupAndRestore keeps the weights and optimizer state in out/backup/).
    resume: bool = False

    @property
    def input_size(self) -> int:
        """`image_size`, or the preset's own when it is not given."""
        return self.image_size if self.image_size is not None else default_image_size(self.model)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"Unknown training option(s) {unknown}; valid options are {sorted(known)}."
            )
        return cls(**values)


def save_json(data: dict[str, Any], path: Path) -> None:
    """Write `data` as indented JSON, atomically (write then rename)."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    temporary.replace(path)


def load_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; is this a run directory written by train?")
    result: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return result
