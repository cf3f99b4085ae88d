"""Segment your own images with a trained SCCAN: K support images with masks, then queries.

    python -m tools.predict --config config/toy/toy_split0_resnet50.yaml \\
        --weight exp/toy/SCCAN/split0/resnet50/snapshot/final_1shot.pth \\
        --support support.jpg:support_mask.png [--support ...] \\
        --query q1.jpg [q2.jpg ... | DIR] --out DIR [--threshold 0.5] [--device cpu|cuda] [--save-prob]

For every query it writes, in --out: ``<name>_mask.png`` (0 background, 255 foreground, the
query's size), ``<name>_overlay.png`` (the query with the mask tinted and outlined, the supports
with their masks beside it) and, with --save-prob, ``<name>_prob.png`` (the foreground
probability x 255). It prints one line per query with its foreground fraction. Support masks:
0 is background, any other value foreground (255 marks ignored pixels where the mask also has
other values). The supports are encoded once for all queries (util/predictor.py).
"""
from __future__ import annotations

import os
import sys

if not __package__:  # run as a file: the project's packages are not importable that way
    print(f"error: run the tools as modules from the repository root: python -m tools.{os.path.splitext(os.path.basename(__file__))[0]} ...", file=sys.stderr)
    raise SystemExit(2)  # a user mistake: status 2, as util/cli.py's run_entry_point

import numpy as np

from util.cli import USER_ERROR_TYPES, UserError, error_message, run_entry_point
from util.config import config_argparser, load_config
from util.predictor import Predictor, read_rgb, read_supports
from util.runtime import progress_bar
from util.visualisation import prediction_overlay, write_png

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def parse_arguments(argv=None):
    parser = config_argparser(__doc__.splitlines()[0], prog="python -m tools.predict")
    add = parser.add_argument
    add("--weight", required=True, help="checkpoint: train_sccan.py's (final/latest/best), a released "
        "one, an ensemble one (base_learner: True) or a bare state_dict")
    add("--support", action="append", required=True, metavar="IMAGE:MASK",
        help="a support image and its mask, joined by ':' (repeat for K shots)")
    add("--query", nargs="+", required=True, metavar="FILE_OR_DIR",
        help="query images, or folders whose images are all queries")
    add("--out", required=True, metavar="DIR", help="output folder")
    add("--threshold", type=float, default=0.5,
        help="foreground where its probability exceeds this (default 0.5, the argmax)")
    add("--device", choices=("cpu", "cuda"), help="default: a GPU when there is one")
    add("--save-prob", action="store_true", help="also write <name>_prob.png (probability x 255)")
    return parser.parse_args(argv)


def split_support(text: str):
    """'image:mask' -> (image, mask). A colon may also sit inside a path (C:\\...): the split
    whose two sides are existing files wins, else the first one."""
    splits = [(text[:index], text[index + 1:]) for index, character in enumerate(text)
              if character == ":" and 0 < index < len(text) - 1]
    if not splits:
        raise UserError(f"--support {text!r}: expected IMAGE:MASK (an image and its mask joined by ':')")
    for image, mask in splits:
        if os.path.isfile(image) and os.path.isfile(mask):
            return image, mask
    return next(((image, mask) for image, mask in splits if os.path.isfile(image)), splits[0])


def query_files(entries) -> list:
    """Files as given, folders expanded to their image files (sorted); a missing entry or a
    folder without images is an error."""
    files = []
    for entry in entries:
        if os.path.isdir(entry):
            found = sorted(os.path.join(entry, name) for name in os.listdir(entry)
                           if name.lower().endswith(IMAGE_EXTENSIONS))
            if not found:
                raise UserError(f"--query {entry!r}: the folder holds no image file ({', '.join(IMAGE_EXTENSIONS)})")
            files += found
        elif os.path.isfile(entry):
            files.append(entry)
        else:
            raise UserError(f"--query {entry!r}: no such file or folder")
    return files


def output_names(files) -> list:
    """One output stem per query: the file's stem, numbered where two queries share one."""
    names, seen = [], {}
    for path in files:
        stem = os.path.splitext(os.path.basename(path))[0]
        seen[stem] = seen.get(stem, 0) + 1
        names.append(stem if seen[stem] == 1 else f"{stem}_{seen[stem]}")
    return names


def main(argv=None):
    arguments = parse_arguments(argv)
    cfg = load_config(arguments.config, arguments.opts)
    # Inputs first: a wrong file is reported before the model is built.
    images, masks = zip(*(split_support(text) for text in arguments.support))
    pictures, labels = read_supports(images, masks)
    files = query_files(arguments.query)
    predictor = Predictor(cfg, arguments.weight, device=arguments.device, threshold=arguments.threshold,
                          log=lambda line: print(line, file=sys.stderr, flush=True))
    predictor.set_support(pictures, labels)
    os.makedirs(arguments.out, exist_ok=True)

    from tqdm import tqdm

    results, failures = [], []
    bar = progress_bar(len(files), "queries", show=len(files) > 1)
    for path, name in zip(files, output_names(files)):
        try:
            results.append(predict_one(predictor, arguments, path, name))
        except USER_ERROR_TYPES + (RuntimeError,) as error:
            # One unreadable or unusable query must not cost the others: named, skipped, counted
            # (a decoder's or the network's error too); --debug shows the traceback instead.
            if arguments.debug:
                raise
            message = error_message(error)
            failures.append(message if path in message else f"{path}: {message}")
            tqdm.write(f"error: {failures[-1]} (query skipped)", file=sys.stderr)
        bar.update(1)
    bar.close()
    if failures:
        raise UserError(f"{len(failures)} of {len(files)} queries failed and were skipped; the "
                        f"first: {failures[0]}")
    return results


def predict_one(predictor: Predictor, arguments, path: str, name: str) -> dict:
    """Predict one query file and write its mask, overlay (and probability) pictures."""
    from tqdm import tqdm

    image = read_rgb(path, "query")
    mask, probability = predictor.predict(image, return_probability=True)
    written = {"mask": os.path.join(arguments.out, f"{name}_mask.png"),
               "overlay": os.path.join(arguments.out, f"{name}_overlay.png")}
    write_png(written["mask"], mask.astype(np.uint8) * 255)
    if arguments.save_prob:
        written["prob"] = os.path.join(arguments.out, f"{name}_prob.png")
        write_png(written["prob"], np.rint(probability * 255).astype(np.uint8))
    fraction = float(mask.mean())
    supports = predictor.support_pictures
    write_png(written["overlay"], prediction_overlay(
        np.clip(image, 0, 255).astype(np.uint8), mask, [picture for picture, _ in supports],
        [label for _, label in supports],
        f"{os.path.basename(path)}: {fraction:.1%} foreground (threshold {arguments.threshold:g})"))
    tqdm.write(f"{path}: {mask.shape[0]}x{mask.shape[1]}, foreground {fraction:.1%} -> {written['mask']}")
    return dict(query=path, foreground=fraction, files=written)


if __name__ == "__main__":
    sys.exit(run_entry_point(main))
