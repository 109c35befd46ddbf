#!/usr/bin/env python3
"""Side by side: the `breakdown.ranges` of `dcformer bench --breakdown --json` outputs (one JSON object per
file, or the last line of a log that starts with '{'), or the sampled steps of training runs (a run's
metrics.jsonl with monitoring.profile_every: the median over its sampled steps of each range's `ranges_s`),
as one table of median ms per step by range path, in tree order, with the difference of each file from the
first.

  python3 scripts/breakdown_compare.py dcformer.json transformerpp.json [--depth 4] [--min-ms 0.5]
  python3 scripts/breakdown_compare.py runs/a/metrics.jsonl runs/b/metrics.jsonl
"""
import argparse
import json
import statistics
import sys


def load_sampled(path, objs):
    """A training run's metrics.jsonl: a summary object and {path: row} from its sampled steps."""
    sampled = [o for o in objs if "ranges_s" in o]
    if not sampled:
        raise ValueError("no sampled step (ranges_s): was monitoring.profile_every set?")
    paths = {p for o in sampled for p in o["ranges_s"]}
    rows = {p: {"path": p, "ms": 1e3 * statistics.median(o["ranges_s"].get(p, 0.0) for o in sampled)} for p in paths}
    steps = statistics.median(o["step_time_s"] for o in objs)
    summary = {"sampled": len(sampled), "steps": len(objs), "step_time_s_median": steps,
               "tokens_per_s": statistics.median(o["tokens_per_s"] for o in objs)}
    return summary, rows


def load(path):
    try:
        with open(path) as f:
            lines = [l for l in f.read().splitlines() if l.startswith("{")]
        if not lines:
            raise ValueError("no line starting with '{'")
        objs = [json.loads(l) for l in lines]
        if "breakdown" not in objs[-1] and "step_time_s" in objs[-1]:
            return load_sampled(path, objs)
        obj = objs[-1]
        rows = obj["breakdown"]["ranges"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        sys.exit(f"breakdown_compare: {path}: not a bench --breakdown --json output or a metrics.jsonl with "
                 f"sampled ranges ({e})")
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
    # A file's name without its extension; a run's metrics.jsonl goes by its run directory's name.
    names = [(f.split("/")[-2] if f.endswith("metrics.jsonl") and "/" in f else f.split("/")[-1]).rsplit(".", 1)[0]
             for f in a.files]
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
        if "sampled" in obj:
            print(f"{n}: {obj['sampled']} sampled of {obj['steps']} steps, step {obj['step_time_s_median']:.4f} s "
                  f"(median of all), {obj['tokens_per_s']:.0f} tokens/s")
            continue
        b = obj["breakdown"]
        print(f"{n}: {b['steps']} profiled steps ({b['clock']} clock), step {b['step_time_s_median']:.4f} s; "
              f"unprofiled step {obj['step_time_s_median']:.4f} s, {obj['tokens_per_s']:.0f} tokens/s on {obj['device']}")


if __name__ == "__main__":
    main()
