"""`tumor-classifier`: one entry point, one subcommand per stage.

This module configures logging and calls the library with the arguments that
`arguments.build_parser` parsed; it holds no logic of its own.
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

from .arguments import build_parser
from .cache import CacheWriteError
from .config import TrainConfig, describe_class

logger = logging.getLogger("tumor_classifier")


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
    print(f"serving {args.run_dir} at http://{args.address}:{args.port}", flush=True)
    if os.name == "posix":
        # Become Streamlit instead of waiting for it: a SIGTERM to this process (from a
        # supervisor, `docker stop`, a test) then stops the server, where it used to stop
        # only this parent and leave Streamlit running, orphaned.
        os.execve(sys.executable, command, environment)
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
