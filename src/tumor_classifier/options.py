"""What `train` makes of its options for one dataset: checks before anything is read,
the defaults that depend on the data (`--model auto`, the other breast, learning rate,
epochs) and the class weights."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

from .config import TrainConfig
from .data import ImageFolder
from .other_breast import other_breasts

logger = logging.getLogger(__name__)


def class_weights(spec: str, counts: dict[str, int]) -> dict[int, float] | None:
    """Class weights for `fit` from `--class-weight`.

    "balanced" gives each class the weight n / (k * n_class), so every class contributes
    equally to the loss (scikit-learn's convention); "none" gives None; "BEN=5,CAN=5,NOR=1"
    sets them explicitly and must name every class.
    """
    names = list(counts)
    if spec == "none":
        return None
    if spec == "balanced":
        total = sum(counts.values())
        return {
            index: total / (len(names) * counts[name]) for index, name in enumerate(names)
        }
    weights: dict[str, float] = {}
    for part in spec.split(","):
        name, _, value = part.partition("=")
        name = name.strip()
        try:
            weights[name] = float(value)
        except ValueError:
            raise ValueError(
                f"--class-weight {spec!r}: {part!r} is not NAME=NUMBER; use 'balanced', "
                "'none' or e.g. 'BEN=5,CAN=5,NOR=1'."
            ) from None
    if set(weights) != set(names) or any(value <= 0 for value in weights.values()):
        raise ValueError(
            f"--class-weight {spec!r}: give one positive weight for each class "
            f"({', '.join(names)}), e.g. {','.join(f'{name}=1' for name in names)}."
        )
    return {index: weights[name] for index, name in enumerate(names)}


def unpaired_films(config: TrainConfig, train_files: Sequence[Path],
                   validation_files: Sequence[Path]) -> list[Path] | None:
    """The training and validation films whose other breast is not named (split.csv,
    LEFT/RIGHT or mini-MIAS file names, or DICOM headers; each split paired within
    itself), or None where the options rule the other breast out. An empty list: every
    film can be paired."""
    if config.other_breast is False or config.patch_pretrain_epochs:
        return None
    return [Path(file) for files in (train_files, validation_files)
            for file, other in zip(files, other_breasts(files), strict=True) if other is None]


def choose_model(config: TrainConfig, unpaired: Sequence[Path] | None, films: int) -> str:
    """The preset that `--model auto` (the default) trains; `unpaired` from
    `unpaired_films` for the `films` training and validation films.

    `seed_asymmetry` where the films can be paired (or --other-breast insists): the `seed`
    network on the film and its other breast (on mini-MIAS the pair is what lifts it, and
    no other trained preset did better there) averaged with a frozen ImageNet probe on the
    difference between the breasts, which raised every AUC at every seed of 5-fold CV by
    woman on mini-MIAS (README, "seed_asymmetry, measured as built").
    Otherwise (regions of interest, ultrasound frames, films of one breast)
    `efficientnet_lite0` from its ImageNet weights, one image at a time: on lesion patches
    of the same films it scored far higher than `seed` (README, "Which model without the
    other breast").
    """
    pairable = unpaired is not None and not unpaired
    model = "seed_asymmetry" if pairable or config.other_breast else "efficientnet_lite0"
    if model == "seed_asymmetry":
        logger.info("--model auto: seed_asymmetry (seed on both breasts, with a frozen "
                    "ImageNet probe on their difference)")
        return model
    if unpaired is None:
        reason = "the options rule out the other breast"
    elif len(unpaired) < films:
        # Most films paired and a few not is worth a look: a missing file or a name that
        # breaks the LEFT/RIGHT pattern would otherwise change the model without a word.
        reason = (f"{len(unpaired)} of {films} training and validation films have no other "
                  f"breast named, for example {unpaired[0]}")
    else:
        reason = "no film's other breast is named"
    logger.info("--model auto: efficientnet_lite0 from ImageNet weights, one image at a time "
                "(%s; --model seed for the original network)", reason)
    return model


def check_options(config: TrainConfig) -> None:
    """Refuse option values that cannot work, before anything is read."""
    from .models import PRETRAINED

    for name, value in (("epochs", config.epochs), ("batch_size", config.batch_size)):
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}.")
    if config.image_size is not None and config.image_size < 16:
        raise ValueError(f"--image-size must be at least 16, got {config.image_size}.")
    if config.other_breast and (config.model in PRETRAINED or config.patch_pretrain_epochs):
        # Both take one image: ImageNet weights expect one grey or RGB picture, and lesion
        # patches have no counterpart in the other breast.
        raise ValueError("--other-breast needs a preset trained from scratch on whole images "
                         "(seed, seed_augmented, mammo_net, mammo_mil, resnet_small), without "
                         "--patch-pretrain-epochs.")
    if config.model == "seed_asymmetry" and (config.other_breast is False
                                             or config.patch_pretrain_epochs):
        raise ValueError("--model seed_asymmetry compares each film with the other breast: "
                         "it cannot take --no-other-breast or --patch-pretrain-epochs.")
    if config.model == "seed_asymmetry" and config.channels != 1:
        # Its layers split the input into one grey film and one grey other breast.
        raise ValueError("--model seed_asymmetry takes grey films: use --channels 1.")
    if config.model == "seed_asymmetry" and config.weights == "none":
        from .asymmetry import BACKBONE
        from .efficientnet_lite import package

        raise ValueError("--model seed_asymmetry needs ImageNet weights for its frozen probe: "
                         "pass --weights imagenet (the default) or the path of the .pth file "
                         f"of {package(BACKBONE)}.")
    if config.keep not in ("best", "last"):
        raise ValueError(f"--keep {config.keep!r}: use best or last.")
    if config.sampling not in ("shuffle", "balanced"):
        raise ValueError(f"--sampling {config.sampling!r}: use shuffle or balanced.")
    if config.label_smoothing is not None and not 0 <= config.label_smoothing < 1:
        raise ValueError(f"--label-smoothing must be at least 0 and below 1, got "
                         f"{config.label_smoothing}.")


def default_rate_and_epochs(pretrained: bool) -> tuple[float, int]:
    """--learning-rate and --epochs when not given: 1e-3 for 10 epochs from scratch, as the
    original project trained; 1e-4 for 20 when fine-tuning pretrained weights.

    Fine-tuning at a tenth of the rate takes more steps: efficientnet_lite0 from ImageNet
    scored higher at 20 epochs than at 10 on lesion patches (README, "How long to
    fine-tune").
    """
    return (1e-4, 20) if pretrained else (1e-3, 10)


def fill_defaults(config: TrainConfig, train_folder: ImageFolder,
                   validation_folder: ImageFolder) -> tuple[TrainConfig, str | None]:
    """`config` with what was left to the defaults resolved for these splits (config.json
    records what was used), and the backbone weights to build the model with (None: random).
    """
    from .models import PRETRAINED

    unpaired = unpaired_films(config, train_folder.files, validation_folder.files)
    pairable = unpaired is not None and not unpaired
    if config.model == "auto":
        films = len(train_folder.files) + len(validation_folder.files)
        config = dataclasses.replace(config, model=choose_model(config, unpaired, films))
    config = dataclasses.replace(config, image_size=config.input_size)  # recorded as used
    if config.other_breast is None:
        # On where every film can be paired with the other breast of its own split (not
        # for the presets that take one image), off for plain class folders; config.json
        # records it.
        paired = pairable and config.model not in PRETRAINED
        config = dataclasses.replace(config, other_breast=paired)
        if paired:
            logger.info("every film's other breast is named (split.csv, LEFT/RIGHT or "
                        "mini-MIAS's numbers in the file names, or DICOM headers): the "
                        "model sees both "
                        "(--no-other-breast for one film at a time).")
    if config.model == "seed_asymmetry" and not config.other_breast:
        from .asymmetry import unpaired_message

        raise ValueError(unpaired_message([str(file) for file in unpaired or []]
                                          or ["every film (the options rule pairs out)"]))
    backbone_weights = config.weights
    if config.model == "seed_asymmetry":
        # ImageNet weights for the frozen probe only: the seed branch trains from scratch,
        # with the from-scratch rate, epochs and label smoothing.
        config = dataclasses.replace(config, weights=backbone_weights or "imagenet")
        backbone_weights = None
    elif config.model in PRETRAINED:  # default ImageNet; "none" = random initialisation
        backbone_weights = {None: "imagenet", "none": None}.get(backbone_weights,
                                                                backbone_weights)
    elif backbone_weights == "none":
        backbone_weights = None
    pretrained = backbone_weights is not None
    learning_rate, epochs = default_rate_and_epochs(pretrained)
    learning_rate = config.learning_rate if config.learning_rate is not None else learning_rate
    epochs = config.epochs if config.epochs is not None else epochs
    # Label smoothing 0.1 from scratch, off when fine-tuning (README, "Label smoothing").
    smoothing = config.label_smoothing
    if smoothing is None:
        smoothing = 0.0 if pretrained else 0.1
    config = dataclasses.replace(config, learning_rate=learning_rate, epochs=epochs,
                                 label_smoothing=smoothing,
                                 weights=backbone_weights or config.weights)
    return config, backbone_weights
