"""`tumor-classifier`: one entry point, one subcommand per stage.

This module parses arguments, configures logging and calls the library; it holds no logic
of its own.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .cache import CacheWriteError
from .config import TrainConfig, describe_class

logger = logging.getLogger("tumor_classifier")

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
                        "only in LEFT/RIGHT, or DICOM headers); default: on when every film "
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
    patient = folders.add_mutually_exclusive_group(required=True)
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


def _prepare(args: argparse.Namespace) -> int:
    from .datasets import prepare_folders, prepare_mini_mias

    if args.dataset == "mini-mias":
        counts = prepare_mini_mias(args.source, args.dest, args.fractions, args.seed)
    else:
        counts = prepare_folders(args.source, args.dest, args.groups, args.patient_pattern,
                                 args.one_image_per_patient, args.fractions, args.seed,
                                 args.copy, args.group_near_copies,
                                 args.patient_from_dicom)
    with (args.dest / "split.csv").open(encoding="utf-8") as handle:
        columns = handle.readline().strip()
    for split, per_class in counts.items():
        total = sum(per_class.values())
        listing = "  ".join(f"{name} {count}" for name, count in per_class.items())
        print(f"{split:<11} {total:4d}   {listing}")
    print(f"wrote {args.dest} (split.csv: {columns})")
    return 0


def _train(args: argparse.Namespace) -> int:
    from .train import train

    started = time.perf_counter()
    run_dir = train(_train_config(args))
    print(f"trained in {time.perf_counter() - started:.0f} s; run directory: {run_dir}")
    print((run_dir / "evaluation" / "validation" / "report.txt").read_text(encoding="utf-8"))
    return 0


def _train_config(args: argparse.Namespace) -> TrainConfig:
    fields = {field.name for field in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{key: value for key, value in vars(args).items() if key in fields})


def _cv(args: argparse.Namespace) -> int:
    from .cv import cross_validate, format_cv

    summary = cross_validate(Path(args.data_dir), Path(args.out), _train_config(args),
                             args.folds, args.groups, args.group_near_copies,
                             args.patient_from_dicom)
    print(format_cv(summary))
    print(f"summary: {Path(args.out) / 'cv_summary.json'}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate

    metrics = evaluate(args.run_dir, args.data_dir, args.out, args.workers, args.cache_dir,
                       args.tta)
    report_dir = Path(metrics["report_dir"])
    print((report_dir / "report.txt").read_text(encoding="utf-8"))
    if metrics["unreadable"]:
        print(f"{len(metrics['unreadable'])} unreadable file(s) were left out (listed above).")
    print(f"report: {report_dir}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from .predict import Classifier, expand_paths, write_predictions

    paths = list(args.paths)
    if args.onnx:
        if args.heatmap:
            raise ValueError("--heatmap needs the Keras model (RUN_DIR), not --onnx.")
        from .export import load_onnx_classifier

        classifier = load_onnx_classifier(args.onnx)
        if args.tta is not None:
            classifier.tta = args.tta
    else:
        if len(paths) < 2:
            raise ValueError("predict needs RUN_DIR and at least one image file or folder.")
        classifier = Classifier.load(paths.pop(0), tta=args.tta)
    files = expand_paths(paths)
    if not files:
        raise FileNotFoundError(f"no image files in {', '.join(map(str, paths))}")
    if args.heatmap and len(files) != 1:
        raise ValueError(f"--heatmap needs exactly one image file, got {len(files)}.")
    others = args.other_breast
    if others is not None and not classifier.other_breast:
        raise ValueError("--other-breast: this model classifies one film; it was not trained "
                         "with --other-breast.")
    results = classifier.predict(files, other_breasts=others)
    names = classifier.class_names
    for result in results:
        if result.error:
            continue  # already logged, one line per file
        assert result.prediction is not None
        probabilities = "  ".join(f"{name} {result.probabilities[name]:.3f}" for name in names)
        description = describe_class(result.prediction)
        copy = (f"  [a {result.near_copy_of} or a near-copy: not a test of the model]"
                if result.near_copy_of else "")
        print(f"{result.file}: {result.prediction} ({description})  {probabilities}{copy}")
    if args.csv:
        write_predictions(results, names, args.csv)
    if args.heatmap and not results[0].error:
        _write_heatmap(classifier, files[0], results[0].prediction, args.heatmap,
                       others[0] if others else None)
    failed = sum(1 for result in results if result.error)
    if failed:
        print(f"{failed} of {len(results)} file(s) could not be classified (see the lines above).",
              file=sys.stderr)
        return 1
    return 0


def _write_heatmap(classifier: Any, file: Path, prediction: str | None, out: Path,
                   other_breast: Path | None = None) -> None:
    from PIL import Image

    from .explain import overlay

    image, model_input = classifier.read(file, other_breast)
    Image.fromarray(overlay(image, classifier.grad_cam(model_input, prediction))).save(out)
    print(f"Grad-CAM for {prediction}: {out}")


def _export(args: argparse.Namespace) -> int:
    from .export import export

    out = export(args.run_dir, args.out, args.file_format)
    print(f"exported {args.run_dir} as {args.file_format}: {out}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .serve import create_app

    uvicorn.run(create_app(args.run_dir), host=args.host, port=args.port, log_level="info")
    return 0


def _app(args: argparse.Namespace) -> int:
    import subprocess

    if not (args.run_dir / "model.keras").is_file():
        raise FileNotFoundError(f"{args.run_dir}: no model.keras; pass a run directory "
                                "written by `tumor-classifier train`.")
    app_file = Path(__file__).with_name("app.py")
    environment = {**os.environ, "TUMOR_CLASSIFIER_RUN_DIR": str(args.run_dir.resolve())}
    command = [sys.executable, "-m", "streamlit", "run", str(app_file),
               "--server.port", str(args.port), "--server.address", args.address,
               "--server.headless", "true", "--server.maxUploadSize", "200",
               "--browser.gatherUsageStats", "false"]
    print(f"serving {args.run_dir} at http://{args.address}:{args.port}")
    return subprocess.call(command, env=environment)


def _cache(args: argparse.Namespace) -> int:
    from .cache import default_cache_dir
    from .cache_maintenance import cache_entries, format_entries, prune_cache

    cache_dir = args.cache_dir or default_cache_dir()
    removed = (prune_cache(cache_dir, everything=args.clear) if args.prune or args.clear
               else None)
    print(format_entries(cache_entries(cache_dir), cache_dir, removed,
                         hint_prune=not args.clear))
    return 0


def _import_tensorflow_quietly() -> None:
    """Import TensorFlow with the process's standard error closed.

    TensorFlow 2.21's C++ code logs "oneDNN custom operations are on" twice at import,
    before absl's logging is set up, so TF_CPP_MIN_LOG_LEVEL cannot silence it: four lines
    of noise before every command's own output. Python errors are unaffected: a failed
    import is dropped here and raised again, with its message, where the command imports
    Keras. `--verbose` keeps the lines.
    """
    if os.environ.get("KERAS_BACKEND") != "tensorflow" or "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            try:
                import tensorflow  # noqa: F401
            except ImportError:
                pass
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _not_retracing(record: logging.LogRecord) -> bool:
    """cv builds one model per fold in one process, and from the fifth TensorFlow warns
    (twice, through absl and through logging) that Keras' predict function was traced
    again: one trace per model is what is expected here, so the warning is dropped."""
    return "triggered tf.function retracing" not in record.getMessage()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.verbose and (args.command in {"train", "cv", "evaluate", "export", "serve"}
                             or (args.command == "predict" and not args.onnx)):
        _import_tensorflow_quietly()
    # This package's messages from INFO up; other libraries' (tf2onnx, absl, PIL) only
    # from WARNING up, unless --verbose.
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    logger.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if not args.verbose:
        logging.getLogger("tensorflow").addFilter(_not_retracing)  # added once
    handlers = {"prepare": _prepare, "train": _train, "cv": _cv, "evaluate": _evaluate,
                "predict": _predict, "export": _export, "serve": _serve, "app": _app,
                "cache": _cache}
    try:
        code = handlers[args.command](args)
        sys.stdout.flush()  # so that a closed pipe is met here, not at exit
        return code
    except (ValueError, FileNotFoundError, FileExistsError, CacheWriteError,
            ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`... | head`): stop quietly, as Python's documentation
        # advises, instead of a traceback at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
