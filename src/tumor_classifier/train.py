"""`train(config) -> run directory`: decode once, fit with class weights, keep one epoch
(the last, or the one with the lowest validation loss)."""

from __future__ import annotations

import datetime
import logging
import math
import platform
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__, resume
from .cache import CachedImages, cache_images
from .config import TrainConfig, class_index, save_json
from .data import ImageFolder, scan_folder, split_folders
from .distribute import distribution_scope
from .evaluate import (
    describe_near_copies,
    fitted_patients,
    patient_groups,
    resampled_patients,
    write_evaluation,
)
from .fit import build_loss, build_optimizer, fit, precision_policy, read_history
from .metrics import (
    apply_temperature,
    binary_tasks,
    fit_temperature,
    negative_log_likelihood,
    threshold_at_specificity,
)
from .near_copies import near_copy_sources, save_thumbnails, thumbnails
from .options import check_options, class_weights, fill_defaults
from .other_breast import (
    WithOtherBreast,
    pair_with_other_breasts,
    straddling_patients,
)
from .plots import plot_history, save_figure

logger = logging.getLogger(__name__)


def _load_split(
    folder: ImageFolder, config: TrainConfig, name: str
) -> tuple[CachedImages | WithOtherBreast, np.ndarray, np.ndarray, list[Path], list[str]]:
    """The split's cached images (with `other_breast`, paired with the other breast), the
    rows that can be used, their labels and files, and the messages of the files that
    cannot."""
    images = cache_images(folder.root, folder.files, config.input_size, config.channels,
                          Path(config.cache_dir) if config.cache_dir else None,
                          config.workers, f"decoding {name}", crop=config.crop_breast)
    inputs: CachedImages | WithOtherBreast = images
    failures = images.failures
    if config.other_breast:
        inputs, failures = pair_with_other_breasts(images, folder.files)
    rows = np.array([row for row in range(len(folder.files)) if row not in failures],
                    dtype=np.int64)
    labels = np.asarray(folder.labels, dtype=np.int64)[rows]
    files = [folder.files[row] for row in rows]
    return inputs, rows, labels, files, list(failures.values())


def _versions() -> dict[str, str]:
    import keras

    versions = {
        "tumor_classifier": __version__,
        "python": platform.python_version(),
        "keras": keras.__version__,
        "keras_backend": keras.backend.backend(),
        "numpy": np.__version__,
    }
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        versions["tensorflow"] = tf.__version__
    elif keras.backend.backend() == "jax":
        import jax

        versions["jax"] = jax.__version__
    return versions


def _calibrate(run_dir: Path, x_val: CachedImages | WithOtherBreast, val_rows: np.ndarray,
               y_val: np.ndarray, class_names: tuple[str, ...]
               ) -> tuple[np.ndarray, dict[str, Any], bool]:
    """Temperature scaling, then the thresholds that give 90% specificity, fitted on the
    validation split for the kept model (as saved in `run_dir`, config.json included);
    predict, the app and evaluate apply them.

    Returns:
        The calibrated validation probabilities, the calibration record for config.json,
        and whether the model collapsed (the same probabilities for every image).
    """
    from .predict import Classifier

    raw = Classifier.load(run_dir).predict_batch(x_val, calibrated=False)[val_rows]
    # A model that gives every image the same probabilities ranks nothing (every AUC 0.5).
    # Seen with `seed` at 1,024 px on the JAX backend (an H200): its 134M-weight dense layer
    # blew up at rate 1e-3 and the output saturated in all five CV folds.
    collapsed = bool(len(raw) > 1 and np.ptp(raw, axis=0).max() <= 1e-6)
    temperature = fit_temperature(y_val, raw)
    calibrated = apply_temperature(raw, temperature)
    thresholds = {
        task: threshold_at_specificity(truth, score)
        for task, (truth, score, _) in binary_tasks(y_val, calibrated, class_names).items()
    }
    return calibrated, {
        "method": "temperature scaling fitted on the validation split",
        "temperature": temperature,
        "validation_nll_before": negative_log_likelihood(y_val, raw),
        "validation_nll_after": negative_log_likelihood(y_val, calibrated),
        "thresholds": {task: value for task, value in thresholds.items() if value is not None},
        "thresholds_rule": "lowest score threshold with >= 90% specificity on validation",
    }, collapsed


def _scan_splits(data_dir: Path) -> tuple[ImageFolder, ImageFolder]:
    """The training and validation splits of `data_dir`, under any of the names
    `config.SPLIT_NAMES` gives them.

    Raises:
        FileNotFoundError: no training or no validation split, naming the way out.
    """
    splits = split_folders(data_dir)
    train_dir, validation_dir = splits.get("train"), splits.get("validation")
    if data_dir.is_dir() and train_dir is None:
        raise FileNotFoundError(
            f"{data_dir}: no train/ folder; train reads DATA/train/{{CLASS}}/ and "
            "DATA/validation/{CLASS}/. To split class folders by patient, run "
            f"`tumor-classifier prepare folders {data_dir} DEST --patient-pattern REGEX` "
            "(or --groups CSV, --patient-from-dicom or --one-image-per-patient) and train "
            "on DEST."
        )
    if train_dir is not None and validation_dir is None:
        # The command given leaves DATA as it is: prepare links a quarter of the patients
        # of train/ into DEST/validation/ and the rest into DEST/train/ (no test split:
        # DATA's own stays the test split).
        held_out = f"{splits['test']}/" if "test" in splits else "images held out from it"
        raise FileNotFoundError(
            f"{data_dir}: no validation/ folder beside {train_dir.name}/; training checks "
            "each epoch and fits its calibration and thresholds on it (never on test/). Split "
            f"{train_dir.name}/ by patient into training and validation images with "
            f"`tumor-classifier prepare folders {train_dir} DEST --fractions 0.75,0.25,0 "
            "--patient-pattern REGEX` (or --groups CSV, --patient-from-dicom or "
            f"--one-image-per-patient), train on DEST and evaluate on {held_out}; or move "
            "about a quarter of the patients, all images of each, from "
            f"{train_dir.name}/ to validation/{{CLASS}}/."
        )
    train_folder = scan_folder(train_dir or data_dir / "train")
    validation_folder = scan_folder(validation_dir or data_dir / "validation",
                                    train_folder.class_names)
    if (train_dir, validation_dir) != (data_dir / "train", data_dir / "validation"):
        logger.info("splits: %s/ for training, %s/ for validation",
                    train_folder.root.name, validation_folder.root.name)
    return train_folder, validation_folder


def patients_in_several_splits(data_dir: Path, train_folder: ImageFolder,
                               validation_folder: ImageFolder) -> tuple[int, str | None]:
    """How many patients have images in more than one of the splits of `data_dir`
    (training, validation and, where there is one, test), and one line on them (None when
    there are none).

    A patient is split.csv's `patient_id` where it lists every image (`prepare` writes it),
    otherwise what file names that differ only in side and view share (`woman_of`: DDSM's
    `A_0001_1.LEFT_CC` and `A_0001_1.RIGHT_MLO`: `straddling_patients`); images whose
    names carry neither count as no one's. The original project's DDSM folders were split
    by image: one woman's films on both sides flatter every validation and test number, so
    this is said before training.
    """
    folders = {"train": train_folder, "validation": validation_folder}
    test_dir = split_folders(data_dir).get("test")
    if test_dir is not None:
        try:  # only its file names are read; evaluate checks the test split itself
            folders["test"] = scan_folder(test_dir, train_folder.class_names)
        except (OSError, ValueError):
            pass
    files = [file for folder in folders.values() for file in folder.files]
    splits = [name for name, folder in folders.items() for _ in folder.files]
    groups = patient_groups(files, data_dir)
    shared, total = straddling_patients(files, splits, groups)
    source = ("split.csv's patient_id" if groups is not None
              else "their file names or DICOM headers")
    if not shared:
        return 0, None
    example = " and ".join(f"{file.name} in {folders[split].root.name}/"
                           for split, file in list(shared[0].items())[:2])
    return len(shared), (
        f"{data_dir}: {len(shared)} of {total} patients have images in more than one "
        f"split, by {source} (for example {example}): the split is by image, not by "
        "patient, so validation and test numbers are optimistic. Split by patient with "
        f"`tumor-classifier prepare folders {data_dir} DEST --patient-pattern REGEX` (or "
        "--patient-from-dicom; it pools the splits) and train on DEST."
    )


def train(config: TrainConfig) -> Path:
    """Train a model on `config.data_dir/{train,validation}` and write a run directory.

    The run directory holds `model.keras` (the kept epoch, `config.keep`),
    `config.json`, `history.csv`, `plots/history.png` and the evaluation of the validation
    split under `evaluation/validation/`.

    Raises:
        ValueError: unreadable images (unless `skip_unreadable`), a malformed dataset or a
            bad option.
        FileExistsError: the run directory already holds a model.
    """
    import keras

    from .models import build_model, flips_top_bottom, freeze_batch_norm
    from .patches import pretrain_on_lesions

    data_dir, run_dir = Path(config.data_dir), Path(config.out)
    resume.check(config, run_dir)
    requested = config  # as given: what --resume must repeat
    check_options(config)
    train_folder, validation_folder = _scan_splits(data_dir)
    shared_patients, shared_message = patients_in_several_splits(
        data_dir, train_folder, validation_folder)
    if shared_message:
        logger.warning("%s", shared_message)
    config, backbone_weights = fill_defaults(config, train_folder, validation_folder)
    class_names = train_folder.class_names
    weights = class_weights(config.class_weight, train_folder.counts())
    if config.sampling == "balanced" and weights is not None:
        # Balanced batches already give every class the same weight; class weights on top
        # would count the correction twice.
        logger.info("--sampling balanced: class weights are not applied.")
        weights = None

    # Decode every image once, before the first epoch; every problem is reported together.
    x_train, train_rows, y_train, train_files, train_failures = _load_split(
        train_folder, config, "train"
    )
    x_val, val_rows, y_val, val_files, val_failures = _load_split(
        validation_folder, config, "validation"
    )
    unreadable = train_failures + val_failures
    if unreadable and not config.skip_unreadable:
        listing = "\n".join(f"  {message}" for message in unreadable)
        raise ValueError(
            f"{len(unreadable)} unreadable image(s) in {data_dir}:\n{listing}\n"
            "Fix or move them, or pass --skip-unreadable to train without them (they are "
            "then listed in the run's config.json). Nothing was changed in the dataset."
        )
    for message in unreadable:
        logger.warning("skipped: %s", message)
    if len(train_rows) == 0 or len(val_rows) == 0:
        raise ValueError(f"{data_dir}: no readable images in train/ or validation/.")
    # Copies of training images in the validation split flatter its loss, the kept epoch,
    # the calibration and the thresholds: said before training, and in the validation report.
    train_thumbnails, val_thumbnails = thumbnails(x_train, train_rows), thumbnails(x_val, val_rows)
    val_copies = near_copy_sources(val_thumbnails, {"train": (train_thumbnails, train_files)})
    copies_message = describe_near_copies(val_files, val_copies)
    if copies_message:
        logger.warning("%s: %s", validation_folder.root, copies_message)

    keras.utils.set_random_seed(config.seed)
    # With the other breast, its image follows the film's own as further channels.
    input_shape = (config.input_size, config.input_size,
                   config.channels * (2 if config.other_breast else 1))
    learning_rate, epochs = config.learning_rate, config.epochs
    smoothing = config.label_smoothing
    # resolved by fill_defaults
    assert learning_rate is not None and epochs is not None and smoothing is not None
    num_classes = len(class_names)
    started = datetime.datetime.now(datetime.UTC)
    normal_index = class_index(class_names, "NOR")
    with distribution_scope(config.distribute, config.batch_size) as devices, \
            precision_policy(config.precision) as policy:
        model = build_model(config.model, input_shape, len(class_names), backbone_weights,
                            normal_index)
        # A resumed run whose backup holds weights has had its patch stage already.
        restored = config.resume and resume.finished_epochs(run_dir) > 0
        if config.patch_pretrain_epochs > 0 and (
                (data_dir / "annotations.csv").is_file() if restored
                else pretrain_on_lesions(model, config, data_dir, train_files, y_train,
                                          class_names, x_train, train_rows, learning_rate)):
            # Then fine-tune on whole films as Keras' transfer-learning guide does: frozen
            # BatchNormalization keeps the statistics the patch classifier learned (whole
            # films, background included, would shift them), and a tenth of the rate.
            freeze_batch_norm(model)
            learning_rate /= 10
        steps = config.steps_per_epoch or math.ceil(len(train_rows) / config.batch_size)
        model.compile(optimizer=build_optimizer(config, learning_rate, epochs * steps),
                      loss=build_loss(config.loss, smoothing), metrics=["accuracy"])
        if not config.resume:
            resume.save_options(requested, run_dir)
        fit(model, config, x_train, train_rows, y_train, x_val, val_rows, y_val,
             num_classes, weights, run_dir, devices)
    history = read_history(run_dir)  # every epoch, those before a --resume included
    val_losses = history["val_loss"]
    finite = np.isfinite(val_losses)
    # before anything else is done with the kept (NaN) checkpoint
    if not finite.any() or (config.keep == "last" and not finite[-1]):
        raise ValueError(
            f"{run_dir}: training diverged (the validation loss was NaN or infinite at "
            f"{'the last' if finite.any() else 'every'} epoch), so no usable model was kept. "
            f"Train again with a lower --learning-rate than "
            f"{learning_rate:g}, e.g. {learning_rate / 10:g}.")
    # nanargmin: np.argmin would pick the first NaN epoch of a run that diverged late.
    kept_epoch = int(np.nanargmin(np.where(finite, val_losses, np.nan))) + 1
    if config.keep == "last":
        kept_epoch = len(val_losses)
    if policy != "float32":
        # Weights are float32 under mixed precision anyway: save the kept checkpoint as a
        # plain float32 model, so predict, the app and the exports run it like any other.
        trained = keras.models.load_model(run_dir / "model.keras", compile=False)
        plain = build_model(config.model, input_shape, num_classes, None, normal_index)
        plain.set_weights(trained.get_weights())
        plain.save(run_dir / "model.keras")
    probe = None
    if config.model == "seed_asymmetry":
        # Second phase: the frozen ImageNet probe on the difference between the breasts,
        # fitted once on features computed once per film, then one model (asymmetry.py).
        from .asymmetry import assemble, fit_probe

        assert config.weights is not None  # resolved by fill_defaults
        seed_branch = keras.models.load_model(run_dir / "model.keras", compile=False)
        # The probe weighs classes as --class-weight says, whatever --sampling did for
        # the network (balanced batches have no counterpart in one regression).
        features, heads, probe = fit_probe(
            config.input_size, config.weights, x_train, train_rows, y_train, x_val,
            val_rows, y_val, num_classes,
            class_weights(config.class_weight, train_folder.counts()))
        model = assemble(seed_branch, features, heads)
        model.save(run_dir / "model.keras")

    run_config: dict[str, Any] = {
        "training": config.to_dict(),
        "class_names": list(class_names),
        "image_size": config.input_size,
        "channels": config.channels,
        "input_shape": list(input_shape),
        "preprocessing": {
            "reader": "tumor_classifier.imaging.read_image (full bit depth, float32 [0, 1])",
            "resize": ("crop to the breast, flip chest wall left, pad to square"
                       if config.crop_breast else "stretch to square")
            + ", antialiased bilinear",
            "intensity": "stretched to the image's own range [min, max] -> [0, 1]",
            "image_size": config.input_size,
            "channels": config.channels,
            "crop_breast": config.crop_breast,
            "other_breast": config.other_breast,
        },
        "model": config.model,
        # Test-time augmentation by default (predict, evaluate, the app, the service and the
        # calibration below average each image with its top-bottom flip) for models trained
        # with that flip: on the lesion patches, efficientnet_lite0's fold models gained
        # macro AUC +0.011 to +0.016 on average, higher at each of sixteen seeds and settings
        # (README, "Which input size for efficientnet_lite0"); seed, trained without
        # flips, gained nothing.
        "tta": flips_top_bottom(model),
        "parameters": int(model.count_params()),
        "class_weight": {class_names[k]: v for k, v in weights.items()} if weights else None,
        "data": {
            "data_dir": str(data_dir),
            "train": dict(zip(class_names, np.bincount(y_train, minlength=num_classes)
                              .tolist(), strict=True)),
            "validation": dict(zip(class_names, np.bincount(y_val, minlength=num_classes)
                                   .tolist(), strict=True)),
        },
        "unreadable_skipped": unreadable,
        # seed_asymmetry: the probe's sizes and fitted C; Grad-CAM explains the seed branch
        # (the probe's pooled features have no map; the ensemble's gradient at the seed
        # branch's convolution is half the branch's own, the same map once normalised).
        **({"probe": probe, "gradcam_model": "seed_branch"} if probe else {}),
        "validation_near_copies_of_train": sum(source is not None for source in val_copies),
        "patients_in_several_splits": shared_patients,
        "devices": devices,
        "kept_epoch": kept_epoch,
        "epochs_run": len(val_losses),
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "versions": _versions(),
    }
    save_json(run_config, run_dir / "config.json")
    save_thumbnails(run_dir, {"train": (train_thumbnails, train_files),
                              "validation": (val_thumbnails, val_files)})
    save_figure(plot_history(history), run_dir / "plots" / "history.png")

    calibrated, calibration, collapsed = _calibrate(run_dir, x_val, val_rows, y_val,
                                                    class_names)
    run_config["collapsed"] = collapsed
    if collapsed:
        logger.warning(
            "%s: the kept model gives every validation image the same probabilities (it "
            "collapsed; validation loss %.2f), so it cannot rank images. Train again with "
            "a lower --learning-rate (e.g. %g), or for a large --image-size a preset with "
            "global pooling (mammo_net, resnet_small, efficientnet_lite0).", run_dir,
            val_losses[kept_epoch - 1], learning_rate / 10)
    run_config["calibration"] = calibration
    save_json(run_config, run_dir / "config.json")
    groups, groups_from = resampled_patients(val_files, validation_folder.root)
    write_evaluation(
        run_dir / "evaluation" / "validation",
        [str(path) for path in val_files],
        y_val,
        calibrated,
        class_names,
        val_failures,
        groups,
        run_config["calibration"]["thresholds"],
        val_copies,
        ["train"],
        run_config["tta"],
        fitted_patients(val_files, {"train": (train_thumbnails, train_files)}),
        groups_from,
    )
    logger.info("kept epoch %d of %d (%s; validation loss %.4f)", kept_epoch, len(val_losses),
                config.keep, val_losses[kept_epoch - 1])
    return run_dir
