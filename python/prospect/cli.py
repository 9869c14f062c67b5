"""The `prospect` command line."""

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="prospect", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="stream synthetic frames through a SmolVLM2-shaped KV cache with drop_middle")
    demo.add_argument("--frames", type=int, default=300, help="frames to stream (default 300)")
    demo.add_argument("--max-seq-len", type=int, default=4096)
    demo.add_argument("--reserved-seq-len", type=int, default=128)
    demo.add_argument("--last-keep-len", type=int, default=512)
    demo.add_argument("--position-mode", choices=["shift", "keep"], default="shift")

    args = parser.parse_args(argv)
    if args.command == "demo":
        from prospect.demo import run_demo

        return run_demo(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
