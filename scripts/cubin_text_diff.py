#!/usr/bin/env python3
"""Compares the machine code of the kernels in two cubins (nvcc -cubin), kernel by kernel.

Usage: cubin_text_diff.py OLD.cubin NEW.cubin

For every .text.<kernel> section of OLD, prints its size and whether NEW holds a section with the same
bytes (and under which name). A source change that is meant to leave a kernel alone (a refactor, a new
template parameter with a default) can be checked here without a GPU: the same bytes run the same way.
Kernel names are matched by content, so renamed or re-templated kernels are still found.
"""
import struct
import sys


def text_sections(path):
    data = open(path, "rb").read()
    if data[:4] != b"\x7fELF" or data[4] != 2:
        sys.exit(f"{path}: not a 64-bit ELF file (a cubin from nvcc -cubin)")
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names_off = headers[shstrndx][4]

    def name(off):
        start = names_off + off
        return data[start:data.index(b"\0", start)].decode()

    return {name(h[0]): data[h[4]:h[4] + h[5]] for h in headers if name(h[0]).startswith(".text.")}


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__.strip().splitlines()[2])
    old, new = text_sections(sys.argv[1]), text_sections(sys.argv[2])
    by_bytes = {}
    for name, code in new.items():
        by_bytes.setdefault(code, []).append(name)
    same = 0
    for name, code in sorted(old.items()):
        match = by_bytes.get(code, [])
        same += bool(match)
        renamed = f"  = {match[0][6:]}" if match and match[0] != name else ""
        print(f"{'same' if match else 'DIFFERS':8s} {len(code):8d} B  {name[6:]}{renamed}")
    print(f"{same} of {len(old)} kernels compile to the same bytes")
    return 0 if same == len(old) else 1


if __name__ == "__main__":
    sys.exit(main())
