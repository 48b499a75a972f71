"""How long the chat's markdown renderer takes on hostile and random text (issue: well under 0.5 s).

    python benchmarks/render_bench.py [--random 200] [--size 20000]

Prints the time of each known-pathological input (deep lists and quotes, thousands of brackets,
emphasis runs...) and the slowest and median of random texts of ``--size`` characters mixing
Unicode, markdown and HTML fragments. Figures, not assertions: this machine's speed varies.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from gemma_widgets.widgets.markdown import render_markdown

PATHOLOGICAL = {
    "nested list '- ' x 1000": "- " * 1000 + "x",
    "nested quote '> ' x 5000": "> " * 5000 + "x",
    "'[' x 20000": "[" * 20000,
    "'![' x 10000": "![" * 10000,
    "'[a](' x 5000": "[a](" * 5000,
    "'*' x 20000": "*" * 20000,
    "'_a' x 10000": "_a" * 10000,
    "'`' x 20000": "`" * 20000,
    "'<' x 20000": "<" * 20000,
    "'[x]: ' x 4000": "[x]: " * 4000,
    "table 500 rows": "| a | b |\n|---|---|\n" + "| 1 | 2 |\n" * 500,
}
PIECES = ["**", "_", "`", "[", "](", ")", "![", "<b>", "</b>", "- ", "> ", "# ", "\n", "\n\n", "```\n", "|",
          "&amp;", "http://x.org/", "\x1b[2J", "\u202e", "👋🏽", "東京", " "]


def random_text(rng: random.Random, size: int) -> str:
    parts, length = [], 0
    while length < size:
        piece = rng.choice(PIECES) if rng.random() < 0.6 else "".join(
            chr(rng.randrange(32, 0x3000)) for _ in range(rng.randrange(1, 20)))
        parts.append(piece)
        length += len(piece)
    return "".join(parts)[:size]


def timed(text: str) -> float:
    start = time.perf_counter()
    render_markdown(text)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--random", type=int, default=200, help="random texts to render (default 200)")
    parser.add_argument("--size", type=int, default=20000, help="characters per random text (default 20000)")
    args = parser.parse_args()
    for name, text in PATHOLOGICAL.items():
        print(f"{name:>28}: {timed(text) * 1000:7.1f} ms")
    rng = random.Random(0)
    times = [timed(random_text(rng, args.size)) for _ in range(args.random)]
    median = statistics.median(times) * 1000
    print(f"{args.random} random texts of {args.size} characters: median {median:.1f} ms, "
          f"slowest {max(times) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
