"""The parser's worst cases: CPU time of each adversarial 64 KB request.

Every case of tests/adversarial.py (long whitespace runs around folds,
thousands of folds, headers, ;params, comma values, deep '<' / '"' / '\\'
nesting, SDP of thousands of lines, Digest of thousands of params) goes
through parse_datagram and through a StreamParser fed 1448-octet segments;
each line prints the least CPU time of ``--repeat`` runs and its ratio to a
plain message of the same size (ordinary header lines), worst first.
tests/sip/test_parse_linear.py asserts every ratio is at most 20.

    python bench/parse_worst.py [--repeat N] [--size OCTETS] [--case NAME ...]

Issue 11 figures (before: 2-8 s for a whitespace run before a fold, i.e.
thousands of times a plain message) are in the branch's report; the
process CPU clock is used, so a loaded machine moves the ratios little.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import adversarial  # noqa: E402
from adversarial import CASE_BY_NAME, CASES, PLAIN, build, cpu_time, datagram_work, stream_work  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5, help="runs per case, the least CPU time kept")
    ap.add_argument("--size", type=int, default=adversarial.SIZE, help="octets per message")
    ap.add_argument("--case", action="append", choices=sorted(CASE_BY_NAME), help="only these cases")
    args = ap.parse_args()
    cases = [CASE_BY_NAME[name] for name in args.case] if args.case else CASES

    plain = build(PLAIN, args.size)
    rows = []
    base = {"datagram": float("inf"), "stream": float("inf")}
    for case in cases:
        data = build(case, args.size)
        spent = {}
        ratios = {}
        for path, factory in (("datagram", datagram_work), ("stream", stream_work)):
            # Plain and case in turn, so a busy spell on the machine slows both.
            plain_best = best = float("inf")
            for _ in range(args.repeat):
                plain_best = min(plain_best, cpu_time(factory(PLAIN), plain, 1))
                best = min(best, cpu_time(factory(case), data, 1))
            base[path] = min(base[path], plain_best)
            spent[path] = best
            ratios[path] = best / plain_best
        rows.append((max(ratios.values()), case.name, spent, ratios))
    print(f"plain {args.size}-octet request: datagram {base['datagram'] * 1e3:.3f} ms, "
          f"stream {base['stream'] * 1e3:.3f} ms CPU (least seen; each ratio is to the "
          "plain runs made alongside that case)")
    rows.sort(reverse=True)
    print(f"{'case':30} {'datagram ms':>12} {'ratio':>7} {'stream ms':>12} {'ratio':>7}")
    for _worst, name, spent, ratios in rows:
        print(f"{name:30} {spent['datagram'] * 1e3:12.3f} {ratios['datagram']:7.1f} "
              f"{spent['stream'] * 1e3:12.3f} {ratios['stream']:7.1f}")


if __name__ == "__main__":
    main()
