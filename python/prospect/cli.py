"""The `prospect` command line."""

import argparse
import sys


def _demo(args):
    from prospect.demo import run_demo

    return run_demo(args)


def _make_model(args):
    from prospect.make_model import make_model, parse_overrides

    out = make_model(args.out, args.preset, seed=args.seed, dtype=args.dtype, overrides=parse_overrides(args.set))
    print(f"wrote {args.preset} checkpoint to {out}")
    return 0


def _verify(args):
    from prospect.verify import report, verify

    r = verify(args.model, dtype=args.dtype, device=args.device, new_tokens=args.tokens)
    print(report(r))
    ok = r["greedy_agree"] == r["greedy_tokens"] or r["divergence_within_rounding"]
    return 0 if ok else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="prospect", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="stream synthetic frames through a SmolVLM2-shaped KV cache with drop_middle")
    demo.add_argument("--frames", type=int, default=300, help="frames to stream (default 300)")
    demo.add_argument("--max-seq-len", type=int, default=4096)
    demo.add_argument("--reserved-seq-len", type=int, default=128)
    demo.add_argument("--last-keep-len", type=int, default=512)
    demo.add_argument("--position-mode", choices=["shift", "keep"], default="shift")
    demo.set_defaults(func=_demo)

    mk = sub.add_parser("make-model", help="write a random-weight SmolVLM2 checkpoint in Hugging Face format")
    mk.add_argument("out", help="output folder")
    mk.add_argument("--preset", default="tiny", choices=["tiny", "256m", "500m", "2.2b"])
    mk.add_argument("--seed", type=int, default=0)
    mk.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    mk.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="override a config value, e.g. text_config.num_key_value_heads=2 (repeatable)")
    mk.set_defaults(func=_make_model)

    vf = sub.add_parser("verify", help="check the native engine against transformers on a checkpoint")
    vf.add_argument("--model", required=True, help="checkpoint folder or Hugging Face id in the local cache")
    vf.add_argument("--device", default="cpu")
    vf.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    vf.add_argument("--tokens", type=int, default=32, help="greedy tokens to compare (default 32)")
    vf.set_defaults(func=_verify)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, NotADirectoryError) as e:
        print(f"prospect {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
