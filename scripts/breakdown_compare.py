#!/usr/bin/env python3
"""Side by side: the `breakdown.ranges` of `dcformer bench --breakdown --json` outputs (one JSON object per
file, or the last line of a log that starts with '{'), as one table of median ms per step by range path,
in tree order, with the difference of each file from the first.

  python3 scripts/breakdown_compare.py dcformer.json transformerpp.json [--depth 4] [--min-ms 0.5]
"""
import argparse
import json
import sys


def load(path):
    try:
        with open(path) as f:
            lines = [l for l in f.read().splitlines() if l.startswith("{")]
        if not lines:
            raise ValueError("no line starting with '{'")
        obj = json.loads(lines[-1])
        rows = obj["breakdown"]["ranges"]
    except (OSError, ValueError, KeyError) as e:
        sys.exit(f"breakdown_compare: {path}: not a bench --breakdown --json output ({e})")
    return obj, {r["path"]: r for r in rows}


def tree_key(path):
    return [part for part in path.split("/")]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+")
    ap.add_argument("--depth", type=int, default=99, help="show paths of at most this many names")
    ap.add_argument("--min-ms", type=float, default=0.0, help="hide paths under this many ms in every file")
    a = ap.parse_args()
    if a.depth < 1:
        sys.exit("breakdown_compare: --depth must be >= 1")
    if a.min_ms < 0:
        sys.exit("breakdown_compare: --min-ms must be >= 0")
    loaded = [load(f) for f in a.files]
    paths = sorted({p for _, rows in loaded for p in rows}, key=tree_key)
    names = [f.split("/")[-1].rsplit(".", 1)[0] for f in a.files]
    head = f"{'range (median ms per step; count in the first file)':<60}" + "".join(f"{n[:14]:>15}" for n in names)
    head += "".join(f"{'d ' + n[:12]:>15}" for n in names[1:])
    print(head)
    for p in paths:
        depth = p.count("/") + 1
        if depth > a.depth:
            continue
        vals = [rows[p]["ms"] if p in rows else 0.0 for _, rows in loaded]
        if max(vals) < a.min_ms:
            continue
        cnt = loaded[0][1].get(p, {}).get("count", 0)
        label = "  " * (depth - 1) + p.split("/")[-1] + (f" x{cnt}" if cnt > 1 else "")
        line = f"{label:<60}" + "".join(f"{v:15.3f}" for v in vals)
        line += "".join(f"{v - vals[0]:+15.3f}" for v in vals[1:])
        print(line)
    for (obj, _), n in zip(loaded, names):
        b = obj["breakdown"]
        print(f"{n}: {b['steps']} profiled steps ({b['clock']} clock), step {b['step_time_s_median']:.4f} s; "
              f"unprofiled step {obj['step_time_s_median']:.4f} s, {obj['tokens_per_s']:.0f} tokens/s on {obj['device']}")


if __name__ == "__main__":
    main()
