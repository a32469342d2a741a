"""Does fnn's step compile to the same program as the hand-written JAX step?

For each workload, lowers and compiles fnn's ``make_step`` (both gradient
methods) and the plain JAX step of ``benchmarks/contenders/jax_steps.py``,
and prints, side by side:

- the number of arguments and results the call flattens (each costs
  dispatch time on every step);
- the operations of the optimised HLO by opcode (fusions counted as one,
  with the ops inside them listed apart), and XLA's FLOP estimate;
- with ``--dump DIR``, the optimised HLO text of each, to ``diff``.

Usage::

    python benchmarks/compare_hlo.py --workloads tiny,mlp
    python benchmarks/compare_hlo.py --workloads tiny --dump /tmp/hlo
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

_OP = re.compile(r"=\s*[\w\[\]{},.:\s/*()-]*?\s([a-z][\w-]*)\(")


def opcode_counts(hlo_text: str) -> tuple[collections.Counter, collections.Counter]:
    """Opcodes of the entry computation, and of everything else (fusion bodies)."""
    entry, other = collections.Counter(), collections.Counter()
    current = other
    for line in hlo_text.splitlines():
        if line.startswith("ENTRY"):
            current = entry
        elif line and not line.startswith(" "):
            current = other
        match = _OP.search(line) if "=" in line else None
        if match and line.startswith("  "):
            current[match.group(1)] += 1
    return entry, other


def parts(workload):
    import jax

    from benchmarks.contenders import fnn_steps, jax_steps

    out = {}
    for method in ("autodiff", "manual"):
        out[f"fnn-{method}"] = fnn_steps.jitted_step(workload, method)
    out["jax"] = jax_steps.jitted_step(workload)
    for name, (step, args) in out.items():
        lowered = step.lower(*args)
        compiled = lowered.compile()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        out[name] = {
            "in_leaves": len(jax.tree.leaves(args)),
            "out_leaves": len(jax.tree.leaves(jax.eval_shape(step, *args))),
            "hlo": compiled.as_text(),
            "flops": (cost or {}).get("flops", float("nan")),
        }
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workloads", default="tiny,mlp,mlp_bn_dropout,large")
    p.add_argument("--dump", metavar="DIR", help="write each optimised HLO here")
    args = p.parse_args(argv)
    from benchmarks.workloads import WORKLOADS

    for name in args.workloads.split(","):
        workload = WORKLOADS[name]
        found = parts(workload)
        names = list(found)
        print(f"== {name}: {workload.note}")
        print(f"   {'':<24}" + "".join(f"{n:>14}" for n in names))
        for label, key in (
            ("argument leaves", "in_leaves"),
            ("result leaves", "out_leaves"),
        ):
            print(f"   {label:<24}" + "".join(f"{found[n][key]:>14}" for n in names))
        print(
            f"   {'XLA flops estimate':<24}"
            + "".join(f"{found[n]['flops']:>14.4g}" for n in names)
        )
        counts = {n: opcode_counts(found[n]["hlo"]) for n in names}
        for part, title in ((0, "entry ops"), (1, "ops in fusions/sub-computations")):
            ops = sorted(set().union(*(counts[n][part] for n in names)))
            total = "".join(f"{sum(counts[n][part].values()):>14}" for n in names)
            print(f"   {title + ' (total)':<24}{total}")
            for op in ops:
                row = [counts[n][part][op] for n in names]
                if part == 0 or len(set(row)) > 1:
                    print(f"     {op:<22}" + "".join(f"{v:>14}" for v in row))
        if args.dump:
            Path(args.dump).mkdir(parents=True, exist_ok=True)
            for n in names:
                path = Path(args.dump) / f"{name}-{n}.hlo.txt"
                path.write_text(found[n]["hlo"])
            print(f"   optimised HLO written to {args.dump}/{name}-*.hlo.txt")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
