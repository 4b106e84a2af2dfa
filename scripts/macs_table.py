"""Exact dense MACs of the networks the docs quote (``hwbench flops`` for each), one JSON file.

    python scripts/macs_table.py --out results/macs_dense.json

MACs are counted, not measured: the file is the same on every machine (its provenance still
records the commit and command that wrote it). docs/engine.md quotes it.
"""

from __future__ import annotations

import argparse

from hwbench.io import atomic_write_json
from hwbench.nets.geometry import ARCHS
from hwbench.pattern.macs import dense_report
from hwbench.provenance import provenance

# (stem, input size): the CIFAR stem at 32 px, and the ImageNet stem at 96 and 224 px
INPUTS = (("cifar", 32), ("imagenet", 96), ("imagenet", 224))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results/macs_dense.json")
    args = ap.parse_args(argv)
    rows = [dense_report(arch, stem, size).to_dict() for arch in ARCHS for stem, size in INPUTS]
    atomic_write_json(args.out, {"what": "exact dense MACs (1 MAC = 2 FLOPs), hwbench flops",
                                 "unit": "MACs", "provenance": provenance(), "networks": rows})
    for r in rows:
        print(f"{r['arch']:9s} {r['stem']:8s} {r['input_size']:4d} px  {r['dense_macs']:,} MACs")


if __name__ == "__main__":
    main()
