"""The command line: ``fastddpm sample | convert | info | bench``.

Bad input (a missing or unreadable checkpoint, an unknown sampler, steps out of range, a folder that
cannot be written, a full disk) ends with exit status 2 and exactly one line on stderr, never a traceback.
torch and the package's heavy modules are imported only by the subcommand that runs, so ``fastddpm
--help`` and argument errors answer at once.
"""

from __future__ import annotations

import argparse
import os
import sys

from fastddpm.cli.errors import CliError
from fastddpm.sampler_registry import NAMES

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
MAX_IMAGES = 2**31


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but an argument error is one line on stderr (argparse prints the usage too)."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


# The sampler names, from the registry (which imports nothing, so `fastddpm --help` needs no torch).
SAMPLER_NAMES = NAMES


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _image_count(text: str) -> int:
    value = _positive_int(text)
    if value > MAX_IMAGES:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_IMAGES} (philox sample indices are 32-bit)")
    return value


def _seed(text: str) -> int:
    value = int(text)
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2**63), got {text}")
    return value


def _eta(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


# The names fastddpm.load takes (fastddpm/pipeline.py), each to the long name the manifest records, so
# --dtype bf16 and --dtype bfloat16 are one setting. Spelled out here: the parser imports no torch.
DTYPE_NAMES = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
}


def _dtype(text: str) -> str:
    try:
        return DTYPE_NAMES[text.lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not one of float32 (fp32), bfloat16 (bf16), float16 (fp16, half)"
        ) from None


_positive_int.__name__ = "positive integer"
_image_count.__name__ = "positive integer"
_seed.__name__ = "integer"
_eta.__name__ = "number"


def _add_threads_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        help="CPU threads for torch (default: OMP_NUM_THREADS, else the cores this process may run on)",
    )


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (cuda:LOCAL_RANK when CUDA is available, else cpu), cpu, cuda or cuda:K",
    )
    parser.add_argument(
        "--dtype",
        type=_dtype,
        default="float32",
        help="float32 (fp32), bfloat16 (bf16) or float16 (fp16, half): the network's dtype (default float32)",
    )
    _add_threads_option(parser)


def _add_flags_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--flags",
        default=None,
        help="an ADM (.pt of improved-/guided-diffusion) checkpoint's flags, as their README writes them: "
        '"--image_size 256 --num_channels 256 --learn_sigma True ..." (MODEL_FLAGS and DIFFUSION_FLAGS)',
    )


def build_parser() -> argparse.ArgumentParser:
    from fastddpm import __version__

    parser = _OneLineParser(prog="fastddpm", description="Fast, exact sampling from DDPM checkpoints.")
    parser.add_argument("--version", action="version", version=f"fastddpm {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)

    sample = commands.add_parser(
        "sample",
        help="draw N images into a folder (resumable, deterministic, torchrun-aware)",
        description="Draw N images into --out. Image i depends only on (checkpoint, settings, seed, i): any batch "
        "size or number of torchrun processes gives the same files, and a rerun of the same command resumes.",
    )
    sample.add_argument(
        "checkpoint",
        nargs="?",
        help="diffusers folder, checkpoint file or Hub id owner/name (default: the embedded model)",
    )
    # -n / --num-images for torchrun: its own parser takes a bare --num for an abbreviation of --numa-binding.
    sample.add_argument(
        "--num",
        "-n",
        "--num-images",
        dest="num",
        type=_image_count,
        required=True,
        help="number of images N",
    )
    sample.add_argument("--out", required=True, help="output folder (created if needed)")
    sample.add_argument(
        "--batch-size", type=_positive_int, default=64, help="images per forward pass (default 64)"
    )
    sample.add_argument(
        "--sampler",
        choices=SAMPLER_NAMES,
        default="ddim",
        metavar="NAME",
        help=f"one of {', '.join(SAMPLER_NAMES)} (default ddim)",
    )
    sample.add_argument(
        "--karras",
        action="store_true",
        help="Karras sigmas (dpm++*, unipc, euler, heun, kdpm2, kdpm2-a, deis, sa-solver)",
    )
    sample.add_argument(
        "--steps",
        type=_positive_int,
        default=None,
        help="denoising steps (default: all for ddpm, else 50)",
    )
    sample.add_argument(
        "--eta", type=_eta, default=None, help="DDIM eta in [0, 1] (default 0); --sampler ddim only"
    )
    sample.add_argument("--seed", type=_seed, default=0, help="noise seed (default 0)")
    sample.add_argument(
        "--format", choices=("png", "npz"), default="png", help="PNG files or one uint8 NHWC npz"
    )
    sample.add_argument(
        "--grid",
        default=None,
        help="also save a grid of the first 64 images to this image file (.png, .jpg, ...; "
        "missing folders are created)",
    )
    sample.add_argument(
        "--grid-scale",
        type=_positive_int,
        default=None,
        help="enlarge the grid's pixels K times, nearest neighbour (default: about 512 px on the longer side)",
    )
    sample.add_argument(
        "--low-res",
        default=None,
        metavar="PATH",
        help="an upsampler's low-resolution images: an npz (arr_0, and arr_1 labels) or a fastddpm output "
        "folder; image i is drawn from image i",
    )
    _add_model_options(sample)
    _add_flags_option(sample)
    sample.add_argument(
        "--classifier",
        default=None,
        help="a guided-diffusion noisy-image classifier (.pt) guiding an ADM checkpoint; its CLASSIFIER_FLAGS "
        "and --classifier_scale go in --flags, as their classifier_sample.py takes them",
    )

    convert = commands.add_parser("convert", help="write any readable checkpoint as a diffusers folder")
    convert.add_argument("source", help="checkpoint file or folder")
    convert.add_argument("destination", help="new diffusers pipeline folder (must not exist or be empty)")
    _add_flags_option(convert)

    info = commands.add_parser("info", help="architecture, parameters, scheduler, GFLOP per step")
    info.add_argument("checkpoint", nargs="?", help="checkpoint (default: the embedded model)")
    info.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    _add_threads_option(info)
    _add_flags_option(info)

    bench = commands.add_parser("bench", help="a short throughput table: fastddpm vs diffusers")
    bench.add_argument("checkpoint", nargs="?", help="checkpoint (default: the embedded model)")
    bench.add_argument("--batch-size", type=_positive_int, default=16)
    bench.add_argument("--steps", type=_positive_int, default=10)
    bench.add_argument("--sampler", choices=SAMPLER_NAMES, default="ddim", metavar="NAME")
    bench.add_argument(
        "--karras",
        action="store_true",
        help="Karras sigmas (dpm++*, unipc, euler, heun, kdpm2, kdpm2-a, deis, sa-solver)",
    )
    bench.add_argument(
        "--repeats", type=_positive_int, default=2, help="timed runs per engine (best is shown)"
    )
    bench.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    _add_model_options(bench)
    _add_flags_option(bench)
    return parser


def _run(args: argparse.Namespace) -> int:
    if hasattr(args, "threads"):
        from fastddpm.cli.threads import use_threads

        args.threads = use_threads(args.threads)
    if args.command == "sample":
        from fastddpm.cli.sample import run_sample

        return run_sample(args)
    if args.command == "convert":
        from fastddpm.cli.info import run_convert

        return run_convert(args)
    if args.command == "info":
        from fastddpm.cli.info import run_info

        return run_info(args)
    from fastddpm.cli.bench import run_bench

    return run_bench(args)


def _one_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return " ".join(text.split())


def _quiet_stdout() -> None:
    """Point stdout at /dev/null: its reader is gone, and the interpreter's final flush must not fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no file descriptor (a test's captured stdout): nothing to flush there
        pass


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = _run(args)
        sys.stdout.flush()  # here, so a reader that is gone shows as BrokenPipeError below, not at exit
        return code
    except BrokenPipeError:  # `fastddpm info --json | head -c 10`: a closed stdout is not an error
        _quiet_stdout()
        return 0
    except CliError as error:
        print(f"fastddpm {args.command}: {_one_line(error)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(
            f"fastddpm {args.command}: interrupted; completed images are kept, rerun to resume",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    except OSError as error:  # a full disk or a folder that vanished mid-run: bad environment, not a bug
        print(f"fastddpm {args.command}: {_one_line(error)}", file=sys.stderr)
        return EXIT_BAD_INPUT
