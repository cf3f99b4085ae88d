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
other values). The supports are encoded once for all queries (evaluation/predictor.py).
"""
from __future__ import annotations

import os
import sys

if not __package__:  # run as a file: the project's packages are not importable that way
    import _as_module  # noqa: F401  (tools/_as_module.py: says how to run it, exits)

import numpy as np
import torch

from evaluation.predictor import Predictor, read_rgb, read_supports
from evaluation.visualisation import prediction_overlay, write_png
from util.cli import USER_ERROR_TYPES, UserError, error_message, run_entry_point
from util.config import config_argparser, load_config
from util.io import check_output_path, first_same_path, same_path
from util.runtime import progress_bar

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


OUTPUT_KINDS = ("mask", "overlay", "prob")


def output_names(files) -> list:
    """One output stem per query: the file's stem, numbered where two queries share one; a
    number never takes another query's own stem (a.jpg, b/a.jpg and a_2.jpg: a, a_3, a_2)."""
    stems = [os.path.splitext(os.path.basename(path))[0] for path in files]
    taken, names, counts = set(stems), [], {}
    for stem in stems:
        if stem not in counts:
            counts[stem] = 1
            names.append(stem)
            continue
        name = stem
        while name in taken:
            counts[stem] += 1
            name = f"{stem}_{counts[stem]}"
        taken.add(name)
        names.append(name)
    return names


def output_files(out: str, name: str, save_prob: bool) -> dict:
    """The files written for the query of output stem ``name``."""
    return {kind: os.path.join(out, f"{name}_{kind}.png") for kind in OUTPUT_KINDS
            if kind != "prob" or save_prob}


def check_arguments(arguments) -> None:
    """The options that do not need any file, before anything is read or built."""
    if not 0.0 < arguments.threshold < 1.0:  # NaN too
        raise UserError(f"--threshold {arguments.threshold:g}: expected a probability strictly between 0 "
                        f"and 1 (0.5 is the argmax)")
    if arguments.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: PyTorch sees no CUDA GPU on this machine; use --device cpu")
    check_output_path(arguments.out, "--out", folder=True)


def check_outputs(arguments, files, names, images, masks) -> None:
    """No output may be an input or be read as one: --out may not be a --query folder (the next
    run would take this run's masks for queries), and no file written may be a query, a support
    or the config or checkpoint."""
    for entry in arguments.query:
        if os.path.isdir(entry) and same_path(entry, arguments.out):
            raise UserError(f"--out {arguments.out} is also the --query folder {entry}: the masks and "
                            f"overlays written there would be taken for queries by the next run; give "
                            f"--out another folder")
    outputs = [((kind, path), written) for path, name in zip(files, names)
               for kind, written in output_files(arguments.out, name, arguments.save_prob).items()]
    inputs = ([("--config", arguments.config), ("--weight", arguments.weight)]
              + [(f"support {index} image", image) for index, image in enumerate(images, 1)]
              + [(f"support {index} mask", mask) for index, mask in enumerate(masks, 1)]
              + [("--query", path) for path in files])
    clash = first_same_path(outputs, inputs)
    if clash is not None:
        (kind, query), written, (other, other_path), is_input = clash
        which = (f"which is {other} {other_path}: writing it would destroy that input" if is_input else
                 f"where the {other[0]} of query {other[1]} goes too: one would replace the other")
        raise UserError(f"--out {arguments.out}: the {kind} of query {query} would be written to {written}, "
                        f"{which}; give --out another folder")


def main(argv=None):
    arguments = parse_arguments(argv)
    check_arguments(arguments)
    cfg = load_config(arguments.config, arguments.opts)
    # Inputs first: a wrong file is reported before the model is built.
    images, masks = zip(*(split_support(text) for text in arguments.support))
    pictures, labels = read_supports(images, masks)
    files = query_files(arguments.query)
    names = output_names(files)
    check_outputs(arguments, files, names, images, masks)
    predictor = Predictor(cfg, arguments.weight, device=arguments.device, threshold=arguments.threshold,
                          log=lambda line: print(line, file=sys.stderr, flush=True))
    predictor.set_support(pictures, labels)
    os.makedirs(arguments.out, exist_ok=True)

    from tqdm import tqdm

    results, failures = [], []
    bar = progress_bar(len(files), "queries", show=len(files) > 1)
    for path, name in zip(files, names):
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
    written = output_files(arguments.out, name, arguments.save_prob)
    write_png(written["mask"], mask.astype(np.uint8) * 255)
    if arguments.save_prob:
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
