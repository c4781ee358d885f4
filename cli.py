"""The `conceptkit` command line."""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

from .benchmarks.registry import SUITES
from .core.errors import ConceptKitError


def finite(minimum: float, *, above: bool, what: str = "a number"):
    """An argparse type: a finite number of at least `minimum` (`above`: more than it), as a node's FLOAT input is
    checked."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not {what}") from None
        if not math.isfinite(value) or value < minimum or (above and value == minimum):
            bound = "above" if above else "of at least"
            raise argparse.ArgumentTypeError(f"{text}: give a finite number {bound} {minimum:g}")
        return value

    return parse


days = finite(0, above=False, what="a number of days")  # a negative age would remove every run
positive = finite(0, above=True)  # a learning rate


MAX_SEED = 0xFFFFFFFFFFFFFFFF


def whole(minimum: int, maximum: int | None = None):
    """An argparse type: a whole number in [minimum, maximum], as a node's INT input is checked."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
        if value < minimum or (maximum is not None and value > maximum):
            upper = f" and at most {maximum}" if maximum is not None else ""
            raise argparse.ArgumentTypeError(f"{value}: give a whole number of at least {minimum}{upper}")
        return value

    return parse


SEED = whole(0, MAX_SEED)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="conceptkit", description="ConceptKit: few-shot personalized text-to-image.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a ComfyUI workflow file (UI or API format) headless")
    run.add_argument("workflow", type=Path, help="the workflow .json file")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="NODE_ID.INPUT=VALUE",
                     help="change one input value before running (repeatable), e.g. --set 3.seed=7")
    run.add_argument("--out", type=Path, default=Path("output"), help="folder for saved images (default: output)")
    run.add_argument("--input-dir", type=Path, default=Path("input"),
                     help="folder LoadImage reads from (default: input)")
    run.add_argument("--models", type=Path, default=None,
                     help="models folder with checkpoints/, diffusers/, clip_tokenizer/ (as in ComfyUI's models)")
    run.add_argument("-q", "--quiet", action="store_true", help="print only errors and the saved files")

    checkpoints = commands.add_parser("checkpoints", help="list what training runs keep (an unfinished run's "
                                      "checkpoints, a finished run's result), and remove old ones")
    checkpoints.add_argument("--models", type=Path, default=None, help="models folder (as for run; default: "
                             "CONCEPTKIT_MODELS_DIR, else ./models); inside ComfyUI: ComfyUI's")
    checkpoints.add_argument("--remove-older-than", type=days, default=None, metavar="DAYS",
                             help="remove the runs whose newest checkpoint is older than DAYS days")
    checkpoints.add_argument("--remove", action="append", default=[], metavar="RUN",
                             help="remove this run's checkpoints (a name from the list; repeatable)")
    checkpoints.add_argument("-q", "--quiet", action="store_true")

    encoder = commands.add_parser("pretrain-encoder", help="pre-train a Concept Encoder (E4T) on a domain: the "
                                  "world's creatures by default, or a folder of images of one class; resumable")
    encoder.add_argument("--out", type=Path, required=True, help="the encoder file to write (.safetensors)")
    encoder.add_argument("--workdir", type=Path, required=True,
                         help="folder for the run's checkpoints (the same command resumes from them)")
    encoder.add_argument("--model", default=None, help="base model (default: the embedded world model)")
    encoder.add_argument("--steps", type=whole(1), default=6000)
    encoder.add_argument("--batch-size", type=whole(1, 4096), default=16)
    encoder.add_argument("--learning-rate", type=positive, default=2e-4)
    encoder.add_argument("--seed", type=SEED, default=0)
    encoder.add_argument("--export-every", type=whole(1), default=500, help="rewrite --out every N steps")
    encoder.add_argument("--clip-vision", type=Path, default=None,
                         help="a local CLIP vision model folder (transformers), needed for real models")
    encoder.add_argument("--images", type=Path, default=None, help="a folder of images of one class (real models)")
    encoder.add_argument("--class-word", default=None, help="the class the images show (with --images)")
    encoder.add_argument("--init", type=Path, default=None, help="an encoder file to go on from")
    encoder.add_argument("-q", "--quiet", action="store_true")

    world = commands.add_parser("world", help="the world's own checks")
    world.add_argument("action", choices=["check"], help="check: the gates a world edition must pass")
    world.add_argument("--quick", action="store_true", help="fewer images: a smoke run, not the reported numbers")
    world.add_argument("--model", default=None, help="a model to check instead of the embedded one")
    world.add_argument("--seed", type=SEED, default=0)
    world.add_argument("-q", "--quiet", action="store_true")

    bench = commands.add_parser("bench", help="run a benchmark suite on the world and print its table")
    bench.add_argument("suite", choices=sorted(SUITES), help="which comparison to run")
    bench.add_argument("--quick", action="store_true", help="fewer images: a smoke run, not the reported numbers")
    bench.add_argument("--json", type=Path, default=None, help="write the rows as JSON here")
    bench.add_argument("--report", type=Path, default=None, help="write report.md and image grids in this folder")
    bench.add_argument("--model", default=None, help="a model to score instead of the embedded one")
    bench.add_argument("--seed", type=SEED, default=0)
    bench.add_argument("-q", "--quiet", action="store_true")
    return parser


def quiet_libraries() -> None:
    """Our own progress lines replace the libraries' loading bars and warnings."""
    import diffusers
    import transformers

    for library in (diffusers, transformers):
        library.utils.logging.set_verbosity_error()
        library.utils.logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    quiet_libraries()
    if args.command == "run":
        from .runner import run_workflow

        if args.out.exists() and not args.out.is_dir():
            print(f"conceptkit: error: --out {args.out} is a file; give a folder for the images.", file=sys.stderr)
            return 2
        results, code = answered(lambda: run_workflow(args.workflow, overrides=args.overrides, output_dir=args.out,
                                                      input_dir=args.input_dir, models_dir=args.models),
                                 "Training nodes saved a checkpoint")
        if code:
            return code
        for saved in results.values():
            for image in saved.get("images", []):
                print(image["path"])
            for path in saved.get("text", []):  # files that Save/Export nodes wrote
                print(path)
    if args.command == "bench":
        return bench(args)
    if args.command == "world":
        from .benchmarks.world_check import table, world_check

        result, code = answered(lambda: world_check(args), "Nothing was kept")
        if code:
            return code
        gates, holds = result
        print(table(gates))
        return 0 if holds else 1
    if args.command == "checkpoints":
        return checkpoints(args)
    if args.command == "pretrain-encoder":
        return pretrain_encoder(args)
    return 0


def pretrain_encoder(args) -> int:
    from .core.methods.concept_encoder.command import pretrain_command

    return answered(lambda: pretrain_command(
        args.out, model_path=args.model, workdir=args.workdir, steps=args.steps, batch_size=args.batch_size,
        learning_rate=args.learning_rate, seed=args.seed, export_every=args.export_every,
        clip_vision=args.clip_vision, images=args.images, class_word=args.class_word, init=args.init),
        "The pre-training saved a checkpoint")[1]


def answered(work, saved: str):
    """(work(), 0), or (None, exit status) after one line: 2 for an error of ours, 130 for Ctrl-C."""
    try:
        return work(), 0
    except ConceptKitError as e:
        print(f"conceptkit: error: {e}", file=sys.stderr)
        return None, 2
    except KeyboardInterrupt:
        print(f"conceptkit: interrupted. {saved}; run the same command again to resume.", file=sys.stderr)
        return None, 130


def checkpoints(args) -> int:
    """Unfinished runs (cancelled or crashed, never queued again) hold checkpoints, finished ones their result,
    until removed here."""
    from .core.training.checkpoints import remove_run, stored_runs
    from .nodes.comfy_adapter import headless_models_dir, models_folder

    with headless_models_dir(args.models):
        folder = models_folder("conceptkit_checkpoints")  # listing creates nothing
    runs = stored_runs(folder)
    unknown = set(args.remove) - {r.path.name for r in runs}
    if unknown:
        print(f"conceptkit: error: no stored run named {', '.join(sorted(unknown))} in {folder}", file=sys.stderr)
        return 2
    print(f"{len(runs)} stored run(s) in {folder}")
    for run in runs:
        old = args.remove_older_than is not None and run.age_days() > args.remove_older_than
        gone = old or run.path.name in args.remove
        if gone:
            remove_run(run)
        state = "finished, result kept" if run.step is None else f"unfinished at step {run.step}"
        print(f"  {run.path.name}  {state}  {run.age_days():.1f} days old  {run.size / 1e6:.1f} MB"
              + ("  removed" if gone else ""))
    return 0


def writable_target(path: Path | None, option: str, kind: str) -> str | None:
    """Why `path` cannot take the bench's output (`kind`: "a file" or "a folder"), or None."""
    if path is None:
        return None
    if kind == "a file" and path.is_dir():
        return f"{option} {path} is a folder; give a file name."
    if kind == "a folder" and path.exists() and not path.is_dir():
        return f"{option} {path} is a file; give a folder (made if missing)."
    parent = path.parent if kind == "a file" else path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return f"{option} {path}: {parent} is a file, not a folder."
    return None


def bench(args) -> int:
    from .benchmarks import BenchOptions, run_suite, write_report
    from .benchmarks.report import format_table, write_json

    problem = writable_target(args.json, "--json", "a file") or writable_target(args.report, "--report", "a folder")
    if problem:  # found now, not after the bench has run
        print(f"conceptkit: error: {problem}", file=sys.stderr)
        return 2
    try:
        options = BenchOptions(quick=args.quick, model=args.model, seed=args.seed)
        rows, grids, notes, figures = run_suite(args.suite, options)
    except ConceptKitError as e:
        print(f"conceptkit: error: {e}", file=sys.stderr)
        return 2
    print(format_table(rows))
    if args.json:
        write_json(args.json, args.suite, rows)
    if args.report:
        print(write_report(args.report, args.suite, rows, grids, notes, figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
