#!/usr/bin/env python3
"""List-scheduling model of the fused DCMHA kernels' causal grid (docs/perf/dcmha_fused.md, round 13, O1).

Each CTA owns 16 query rows of one sequence and visits every key tile of 32 up to its last row, so tile
i (from 0) costs (16 i + 16) / 32 key tiles plus a fixed cost. CTAs start in dispatch order on the first free
slot (slots = CTAs resident at once on the whole GPU; a cluster pair counts as one unit on half the
slots). Prints the makespan for the blockIdx order (each batch heaviest first, batch after batch) and for
the heaviest tiles first over all batches (or, with --group G, over groups of G batches taken one after
the other, as the kernels' DCF_GRID_GROUP), in key-tile units.

usage: tile_order_model.py [--fixed C] [--group G] B T SLOTS [B T SLOTS ...]
"""
import argparse
import heapq


def makespan(jobs, slots):
    free = [0.0] * slots
    end = 0.0
    for w in jobs:
        t = heapq.heappop(free) + w
        end = max(end, t)
        heapq.heappush(free, t)
    return end


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fixed", type=float, default=2.0, help="fixed cost of a CTA in key tiles (default 2)")
    ap.add_argument("--group", type=int, default=0, help="batches interleaved per group (default 0 = all)")
    ap.add_argument("shape", nargs="+", type=int, help="B T SLOTS triples")
    args = ap.parse_args()
    if args.group < 0:
        ap.error(f"--group must be 0 (all) or a positive batch count, got {args.group}")
    if len(args.shape) % 3:
        ap.error("shapes come as B T SLOTS triples")
    for k in range(0, len(args.shape), 3):
        b, t, slots = args.shape[k:k + 3]
        if b < 1 or t < 16 or slots < 1:
            ap.error(f"bad shape B={b} T={t} SLOTS={slots}")
        tiles = t // 16
        work = [args.fixed + (16 * i + 16) / 32 for i in range(tiles)]
        blockidx = [work[i] for _ in range(b) for i in reversed(range(tiles))]
        grp = args.group if args.group > 0 else b
        heaviest = []
        for first in range(0, b, grp):
            heaviest += sorted((work[i] for _ in range(first, min(b, first + grp)) for i in range(tiles)), reverse=True)
        a, h = makespan(blockidx, slots), makespan(heaviest, slots)
        bound = max(sum(blockidx) / slots, max(work))
        print(f"B{b} T{t} slots {slots}: blockIdx order {a:.1f}, heaviest first{f' (groups of {grp})' if grp < b else ''} {h:.1f} "
              f"({100 * (h - a) / a:+.1f} %), bound {bound:.1f}")


if __name__ == "__main__":
    main()
