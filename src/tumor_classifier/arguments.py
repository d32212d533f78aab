"""What `tumor-classifier` accepts: the parser of every subcommand, with its help and
defaults. `cli.py` runs the commands; `train` and `cv` get one flag per `TrainConfig`
field, with the dataclass's defaults."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import __version__
from .config import TrainConfig

TTA_HELP = ("average over the image and its top-bottom flip (default: as the run records: "
            "on for models trained with that flip, such as efficientnet_lite0)")
RUN_DIR_HELP = "a run directory written by train"
WORKERS_HELP = "processes that decode images; 0: one per CPU core"
CACHE_DIR_HELP = ("the decoded-image cache (default: $TUMOR_CLASSIFIER_CACHE or "
                  "~/.cache/tumor-classifier)")


def _fractions(text: str) -> tuple[float, float, float]:
    message = f"expected three numbers like 0.6,0.2,0.2, got {text!r}"
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(message) from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError(message)
    return values[0], values[1], values[2]


def _add_train_options(parser: argparse.ArgumentParser, data_help: str,
                       out_help: str) -> None:
    """One flag per TrainConfig field, with the dataclass's defaults."""
    defaults = TrainConfig(data_dir="", out="")
    parser.add_argument("data_dir", help=data_help)
    parser.add_argument("--out", required=True, help=out_help)
    parser.add_argument("--model", default=defaults.model,
                        help="model preset, or auto (the default): seed_asymmetry (seed with "
                        "the other breast, and a frozen ImageNet probe on their difference) "
                        "where every film's other breast is named, else efficientnet_lite0 "
                        "from ImageNet weights")
    parser.add_argument("--image-size", type=int, default=None,
                        help="square input side (default: 128 for seed, 512 for "
                        "seed_asymmetry, 256 for the other presets)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="default: 10, or 20 when fine-tuning pretrained weights")
    for name, meaning in (
            ("channels", "1: grey; 3: the grey image repeated, for RGB backbones"),
            ("batch_size", "images per training step"),
            ("seed", "fixes the initial weights, the batch order and, in cv, the folds"),
            ("workers", WORKERS_HELP),
            ("patch_pretrain_epochs", "epochs on lesion patches (DATA_DIR/annotations.csv)"
             " before whole images, Shen et al.'s two stages; 0: none")):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int,
                            default=getattr(defaults, name),
                            help=f"{meaning} (default: %(default)s)")
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="default: 1e-3, or 1e-4 when fine-tuning pretrained weights")
    parser.add_argument("--class-weight", default=defaults.class_weight,
                        help="balanced | none | BEN=5,CAN=5,NOR=1 (default: %(default)s)")
    parser.add_argument("--sampling", choices=["shuffle", "balanced"],
                        default=defaults.sampling,
                        help="balanced: every class equally likely in each batch, instead of "
                        "class weights (default: %(default)s)")
    parser.add_argument("--precision", choices=["float32", "mixed"],
                        default=defaults.precision,
                        help="mixed: float16 compute on GPUs, bfloat16 elsewhere; the saved "
                        "model is float32 (default: %(default)s)")
    parser.add_argument("--loss", choices=["crossentropy", "focal"], default=defaults.loss,
                        help="focal: focal loss, gamma 2 (default: %(default)s)")
    parser.add_argument("--label-smoothing", type=float, default=None,
                        help="smooth the one-hot targets by this much, 0 to 1 (default: 0.1 "
                        "from scratch, 0 when fine-tuning pretrained weights)")
    parser.add_argument("--lr-schedule", choices=["constant", "cosine"],
                        default=defaults.lr_schedule,
                        help="cosine: decay to 0 over all epochs (default: %(default)s)")
    parser.add_argument("--keep", choices=["best", "last"], default=defaults.keep,
                        help="the epoch to keep: lowest validation loss, or the last "
                        "(default: %(default)s)")
    for name, meaning in (
            ("steps_per_epoch", "training batches per epoch (default: one pass)"),
            ("validation_steps", "validation batches per epoch (default: one pass)"),
            ("patience", "stop after this many epochs without a lower validation loss "
             "(default: train every epoch)")):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=None,
                            help=meaning)
    parser.add_argument("--distribute", choices=["none", "data-parallel"],
                        default=defaults.distribute,
                        help="data-parallel: split each batch over all devices "
                        "(JAX DataParallel or tf.distribute.MirroredStrategy)")
    parser.add_argument("--weights", default=None,
                        help="pretrained presets: imagenet (default), a weights file, or none")
    parser.add_argument("--crop-breast", action=argparse.BooleanOptionalAction,
                        default=defaults.crop_breast,
                        help="crop to the breast and flip to one orientation first")
    parser.add_argument("--other-breast", action=argparse.BooleanOptionalAction,
                        default=defaults.other_breast,
                        help="give the model the woman's other breast too (split.csv's "
                        "other_breast column, which prepare writes, file names that differ "
                        "only in LEFT/RIGHT, mini-MIAS's numbered pairs, or DICOM headers); "
                        "default: on when every film "
                        "has its other breast")
    parser.add_argument("--cache-dir", default=None,
                        help=CACHE_DIR_HELP)
    parser.add_argument("--skip-unreadable", action="store_true",
                        help="train without unreadable images instead of refusing to start")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run in --out from its last finished "
                        "epoch (pass the same options)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tumor-classifier",
        description="Classify breast images as BEN, CAN or NOR. Research software, not a "
        "medical device.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    prepare = commands.add_parser(
        "prepare", help="build the split layout from mini-MIAS or from any class folders")
    builders = prepare.add_subparsers(dest="dataset", required=True)
    mias = builders.add_parser("mini-mias", help="the mini-MIAS distribution, split by woman")
    mias.add_argument("source", type=Path, help="mini-MIAS folder or all-mias.tar.gz")
    folders = builders.add_parser(
        "folders", help="class folders SOURCE/{CLASS}/..., split by patient")
    folders.add_argument("source", type=Path,
                         help="folder with one subfolder per class (or with split folders "
                         "of class folders, which are pooled and split again)")
    # Without one, the file names must say whose each film is (DDSM's side and view words,
    # mini-MIAS's numbers): `prepare_folders` refuses otherwise, naming these options.
    patient = folders.add_mutually_exclusive_group()
    patient.add_argument("--groups", type=Path, default=None,
                         help="CSV with file,patient_id (file relative to SOURCE)")
    patient.add_argument("--patient-pattern", default=None, metavar="REGEX",
                         help="regular expression that finds the patient in each file's path "
                         "below its class folder (its first group, or the whole match)")
    patient.add_argument("--patient-from-dicom", action="store_true",
                         help="the patient in each DICOM header (PatientID, compared only: "
                         "split.csv numbers the patients)")
    patient.add_argument("--one-image-per-patient", action="store_true",
                         help="state that every image is a different patient")
    folders.add_argument("--copy", action="store_true",
                         help="copy the images instead of linking them")
    folders.add_argument("--group-near-copies", action="store_true",
                         help="decode every image once and split patients whose images are "
                         "near-copies of one picture as one patient")
    for builder in (mias, folders):
        builder.add_argument("dest", type=Path,
                             help="a new folder for train/, validation/, test/ and split.csv")
        builder.add_argument("--fractions", type=_fractions, default=(0.6, 0.2, 0.2),
                             help="train,validation,test shares of patients "
                             "(default: 0.6,0.2,0.2)")
        builder.add_argument("--seed", type=int, default=0,
                             help="draws which patients go to which split (default: 0)")

    _add_train_options(commands.add_parser("train", help="train a model, write a run directory"),
                       "folder with train/ and validation/ class folders",
                       "run directory to write")

    cv = commands.add_parser("cv", help="cross-validate by patient (choose models this way)")
    _add_train_options(cv, "prepared dataset with split.csv, or class folders (split or not) with "
                       "--groups",
                       "folder for the folds' runs and the summary")
    cv.add_argument("--folds", type=int, default=5,
                    help="folds of patients, stratified by label (default: 5)")
    cv_patient = cv.add_mutually_exclusive_group()
    cv_patient.add_argument("--groups", type=Path, default=None,
                            help="CSV with file,patient_id (file relative to DATA_DIR)")
    cv_patient.add_argument("--patient-from-dicom", action="store_true",
                            help="the patient in each DICOM header (PatientID, compared "
                            "only: the folds' split.csv numbers the patients)")
    cv.add_argument("--group-near-copies", action="store_true",
                    help="decode every image once and keep the patients of near-copies of "
                    "one picture in one fold")

    evaluate = commands.add_parser("evaluate", help="evaluate a run on a class-folder dataset")
    evaluate.add_argument("run_dir", type=Path, help=RUN_DIR_HELP)
    evaluate.add_argument("data_dir", type=Path,
                          help="class folders to evaluate on, such as DATA/test")
    evaluate.add_argument("--out", type=Path, default=None,
                          help="report folder (default: RUN_DIR/evaluation/<DATA_DIR's name>)")
    evaluate.add_argument("--workers", type=int, default=0,
                          help=f"{WORKERS_HELP} (default: 0)")
    evaluate.add_argument("--cache-dir", type=Path, default=None,
                          help=CACHE_DIR_HELP)
    evaluate.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                          help=TTA_HELP)

    predict = commands.add_parser(
        "predict", help="classify image files or folders",
        usage="tumor-classifier predict (RUN_DIR | --onnx MODEL.onnx) PATH... [options]")
    predict.add_argument("paths", type=Path, nargs="+", metavar="RUN_DIR PATH",
                         help="the run directory (unless --onnx), then files or folders")
    predict.add_argument("--onnx", type=Path, default=None,
                         help="use this ONNX export with onnxruntime (no TensorFlow needed)")
    predict.add_argument("--csv", type=Path, default=None, help="write results to this CSV")
    predict.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                         help=TTA_HELP)
    predict.add_argument("--heatmap", type=Path, default=None,
                         help="write the Grad-CAM overlay of the (single) file to this PNG")
    predict.add_argument("--other-breast", type=Path, action="append", default=None,
                         metavar="FILE",
                         help="models trained with --other-breast: the same woman's other "
                         "breast, once per image file, in the same order")

    export = commands.add_parser("export", help="export a run to ONNX or a SavedModel")
    export.add_argument("run_dir", type=Path, help=RUN_DIR_HELP)
    export.add_argument("out", type=Path, help="the .onnx file or SavedModel folder to write")
    export.add_argument("--format", dest="file_format", choices=["onnx", "saved-model"],
                        default="onnx", help="default: onnx")

    serve = commands.add_parser("serve", help="start the REST service on a trained model")
    serve.add_argument("run_dir", type=Path, help=RUN_DIR_HELP)
    serve.add_argument("--host", default="127.0.0.1",
                       help="interface to listen on (default: localhost only)")
    serve.add_argument("--port", type=int, default=8000, help="default: 8000")

    app = commands.add_parser("app", help="start the Streamlit app on a trained model")
    app.add_argument("run_dir", type=Path, help=RUN_DIR_HELP)
    app.add_argument("--port", type=int, default=8501, help="default: 8501")
    app.add_argument("--address", default="127.0.0.1",
                     help="interface to listen on (default: localhost only)")

    cache = commands.add_parser(
        "cache", help="list the decoded-image cache; remove what no dataset can use")
    cache.add_argument("--cache-dir", type=Path, default=None,
                       help=CACHE_DIR_HELP)
    action = cache.add_mutually_exclusive_group()
    action.add_argument("--prune", action="store_true",
                        help="remove entries whose dataset folder is gone or whose "
                        "preprocessing is older than this version's")
    action.add_argument("--clear", action="store_true",
                        help="remove every entry (each is rebuilt when next needed)")
    return parser
