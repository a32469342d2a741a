"""Milliseconds per training step: fnn against plain JAX, Flax, Equinox, PyTorch.

One training step is forward + backward + Adam update, called from Python
and blocked on, after compilation and warm-up, in float32 on a synthetic
batch held in memory. Each framework's contenders run in a process of
their own (``benchmarks/worker.py``: PyTorch's threads never share a
process with XLA's), and all contenders of a workload are timed
interleaved round by round (see ``benchmarks/harness.py``); each is
each is reported as its median step time, its ratio to the plain JAX step,
its achieved matmul/conv GFLOP/s and that as a share of the float32 matmul
peak (a jitted square matmul, measured at start and at end). The targets
the project set are checked at the end.

Usage (from the repository root)::

    python benchmarks/run.py                       # everything available
    python benchmarks/run.py --quick               # fnn + plain JAX, tiny + mlp
    python benchmarks/run.py --workloads mlp,large --frameworks fnn,jax,torch
    python benchmarks/run.py --workloads cnn --frameworks fnn,jax,torch-channels-last
    python benchmarks/run.py --steps 20 --rounds 9 --json results.json
    python benchmarks/run.py --list                # workloads, FLOP formulas
    python benchmarks/run.py --first-step --frameworks fnn,jax --rounds 5

``--first-step`` times what a user waits for before training starts
instead of the steady step: for every workload and contender, in a fresh
process each time (rounds interleaved), the import of its library, its
``init`` (model, optimizer state, batch on the device) and its first step
(trace, compile, run); the target is fnn's init + first step within
``FIRST_STEP_VS_JAX`` of plain JAX's.

``--frameworks`` takes contender names (``fnn-autodiff``, ``flax-nnx-split``)
or groups: ``fnn``, ``jax``, ``flax`` (linen and every NNX variant),
``linen``, ``nnx``, ``equinox``, ``torch``. Contenders whose library is not
installed are skipped with a note.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import allocator  # noqa: E402  (stdlib only: safe before jax)

GROUPS = {
    "fnn": ["fnn-autodiff", "fnn-manual"],
    "jax": ["jax"],
    "flax": ["flax-linen", "flax-nnx", "flax-nnx-cached", "flax-nnx-split"],
    "linen": ["flax-linen"],
    "nnx": ["flax-nnx", "flax-nnx-cached", "flax-nnx-split"],
    "equinox": ["equinox"],
    "torch": ["torch", "torch-channels-last", "torch-1thread"],
}
QUICK_WORKLOADS = "tiny,mlp"
QUICK_FRAMEWORKS = "fnn,jax"

# Targets: fnn autodiff within 2% of plain JAX where the workloads allow the
# same program; the hand-written backward within 10% of autodiff.
AUTODIFF_VS_JAX = 1.02
AUTODIFF_VS_JAX_WORKLOADS = ("mlp", "mlp_bn_dropout", "tiny", "large")
MANUAL_VS_AUTODIFF = 1.10
LARGE_PEAK_SHARE = 0.90
CNN_PEAK_SHARE = 0.65
# Compute-bound workloads time a square matmul among their contenders each
# round (the probe): the peak measured at start and end is the best of a few
# calls, in whatever quiet moment they found, while a step's median meets
# the machine's load; the probe meets the same load as the steps.
# 1024 is large's own matmul size (batch 1024, 1024 units); smaller probes
# time dispatch as much as arithmetic.
PROBE = "matmul-probe"
PROBE_N = 1024
PROBED_WORKLOADS = ("large", "cnn")
# Time to first step (init + first call): fnn within 10% of plain JAX's.
FIRST_STEP_VS_JAX = 1.10


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: {QUICK_FRAMEWORKS} on {QUICK_WORKLOADS}, "
        "few rounds and steps",
    )
    p.add_argument("--workloads", help="comma-separated (default: all)")
    p.add_argument(
        "--frameworks",
        help=f"comma-separated contenders or groups {sorted(GROUPS)} (default: all)",
    )
    p.add_argument(
        "--steps",
        type=int,
        help="timed steps per round (default: about --round-seconds)",
    )
    p.add_argument("--rounds", type=int, help="rounds (default 10; --quick 3)")
    p.add_argument(
        "--round-seconds",
        type=float,
        default=0.2,
        help="target time of one contender's round when --steps is unset",
    )
    p.add_argument(
        "--peak-size",
        type=int,
        help="measure the matmul peak at this n only (default: the "
        "best of 512, 1024, 2048)",
    )
    p.add_argument(
        "--allocator",
        choices=("auto", "system"),
        default="auto",
        help="auto: re-exec under tcmalloc or tuned glibc; system: as is",
    )
    p.add_argument(
        "--first-step",
        action="store_true",
        help="time import, init and the first step of each contender, each "
        "in a fresh process, instead of the steady step (--rounds: fresh "
        "processes per contender, default 3)",
    )
    p.add_argument("--json", metavar="PATH", help="also write the results here")
    p.add_argument(
        "--list",
        action="store_true",
        help="list workloads, contenders and FLOP formulas, then exit",
    )
    return p.parse_args(argv)


def select(args):
    from benchmarks.contenders import CONTENDERS
    from benchmarks.workloads import WORKLOADS

    workloads = args.workloads or (
        QUICK_WORKLOADS if args.quick else ",".join(WORKLOADS)
    )
    frameworks = args.frameworks or (
        QUICK_FRAMEWORKS if args.quick else ",".join(GROUPS)
    )
    chosen_w = [w.strip() for w in workloads.split(",") if w.strip()]
    chosen_c = []
    for name in (f.strip() for f in frameworks.split(",") if f.strip()):
        for c in GROUPS.get(name, [name]):
            if c not in CONTENDERS:
                sys.exit(
                    f"unknown framework or contender {name!r}; choose from "
                    f"{sorted(GROUPS)} or {sorted(CONTENDERS)}"
                )
            if c not in chosen_c:
                chosen_c.append(c)
    for w in chosen_w:
        if w not in WORKLOADS:
            sys.exit(f"unknown workload {w!r}; choose from {sorted(WORKLOADS)}")
    return [WORKLOADS[w] for w in chosen_w], chosen_c


def note(text):
    print(text, file=sys.stderr, flush=True)


def build_all(workload, names, workers):
    """Builds, compiles and warms up every contender, each in the worker
    process of its module (started on first use, kept in ``workers``);
    returns ``(steps, seconds per warm step, skipped reasons)``."""
    from benchmarks.contenders import CONTENDERS
    from benchmarks.worker import RemoteStep, Worker

    steps, warm, skipped = {}, {}, {}
    for name in names:
        module = CONTENDERS[name][0]
        if module not in workers:
            workers[module] = Worker()
        reply = workers[module].ask(op="build", workload=workload.name, contender=name)
        if "skip" in reply:
            skipped[name] = reply["skip"]
            note(f"  {workload.name}: skipping {name}: {skipped[name]}")
        else:
            warm[name] = reply["warm"]
            steps[name] = RemoteStep(workers[module], name)
    return steps, warm, skipped


def measure(workload, names, args, probe_n, workers):
    """Times every contender on ``workload``, with the ``probe_n`` matmul
    probe among them when the workload is compute-bound: ``(rows, skipped)``."""
    from benchmarks import harness

    rounds = args.rounds or (3 if args.quick else 10)
    note(f"{workload.name}: building {len(names)} contenders")
    steps, warm, why = build_all(workload, names, workers)
    skipped = [
        {"workload": workload.name, "contender": c, "reason": r} for c, r in why.items()
    ]
    if not steps:
        return [], skipped
    if workload.name in PROBED_WORKLOADS:
        steps[PROBE] = harness.matmul_probe(probe_n)
    n = args.steps or (5 if args.quick else None)
    if n is None:
        typical = harness.median(list(warm.values()))
        n = int(min(2000, max(2, round(args.round_seconds / typical))))
    note(f"{workload.name}: {rounds} rounds of {n} steps")
    per_round = harness.interleaved(
        steps,
        rounds=rounds,
        steps=n,
        progress=lambda s: note(f"  {workload.name}: {s}"),
    )
    for worker in workers.values():  # free this workload's buffers
        worker.ask(op="drop")
    probe = per_round.pop(PROBE, None)
    medians = {
        c: harness.median([t for r in rs for t in r]) for c, rs in per_round.items()
    }
    floor = medians.get("jax")
    if probe is not None:
        probe_flops = 2 * probe_n**3
        probe_gflops = probe_flops / harness.median([t for r in probe for t in r]) / 1e9
        probe_best = probe_flops / min(min(r) for r in probe) / 1e9
        note(f"{workload.name}: {PROBE} {probe_n}: {probe_gflops:.1f} GFLOP/s median")
    rows = []
    for name, rs in per_round.items():
        t = medians[name]
        gflops = workload.step_flops() / t / 1e9
        best_gflops = workload.step_flops() / min(min(r) for r in rs) / 1e9
        rows.append(
            {
                "workload": workload.name,
                "contender": name,
                "ms_per_step": t * 1e3,
                "best_ms": min(min(r) for r in rs) * 1e3,
                "spread": harness.spread([harness.median(r) for r in rs]),
                "ratio_to_jax": t / floor if floor else None,
                "gflops": gflops,
                "best_gflops": best_gflops,
                "probe_gflops": probe_gflops if probe else None,
                "probe_share": gflops / probe_gflops if probe else None,
                "best_probe_share": best_gflops / probe_best if probe else None,
                "steps_per_round": n,
                "rounds": len(rs),
                "step_ms": [[x * 1e3 for x in r] for r in rs],
            }
        )
    return rows, skipped


def evaluate_targets(rows):
    """``(target, holds or None when not measured, detail)`` for each target."""
    ms = {(r["workload"], r["contender"]): r["ms_per_step"] for r in rows}
    share = {(r["workload"], r["contender"]): r for r in rows}
    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    out = []

    def ratio_target(label, w, a, b, limit, strict=False):
        if (w, a) in ms and (w, b) in ms:
            q = ms[(w, a)] / ms[(w, b)]
            out.append(
                (
                    label,
                    q < limit if strict else q <= limit,
                    f"{q:.3f}x ({ms[(w, a)]:.4g} / {ms[(w, b)]:.4g} ms)",
                )
            )
        else:
            out.append((label, None, "not measured"))

    for w in AUTODIFF_VS_JAX_WORKLOADS:
        if w in workloads:
            ratio_target(
                f"{w}: fnn-autodiff <= {AUTODIFF_VS_JAX}x jax",
                w,
                "fnn-autodiff",
                "jax",
                AUTODIFF_VS_JAX,
            )
    for w in workloads:
        ratio_target(
            f"{w}: fnn-manual <= {MANUAL_VS_AUTODIFF}x fnn-autodiff",
            w,
            "fnn-manual",
            "fnn-autodiff",
            MANUAL_VS_AUTODIFF,
        )
    if "cnn" in workloads:
        # Against the faster of the two PyTorch thread settings.
        torches = [c for c in GROUPS["torch"] if ("cnn", c) in ms]
        best = min(torches, key=lambda c: ms[("cnn", c)], default="torch")
        for c in ("fnn-autodiff", "fnn-manual"):
            ratio_target(
                f"cnn: {c} faster than PyTorch eager ({best})",
                "cnn",
                c,
                best,
                1.0,
                strict=True,
            )

    def share_target(w, contender, limit, note=""):
        # Judged against the probe timed in the same rounds (see PROBE).
        r = share.get((w, contender))
        out.append(
            (
                f"{w}: {contender} >= {limit:.0%} of the matmul rate "
                f"({PROBE}, same rounds)",
                None if r is None else r["probe_share"] >= limit,
                "not measured"
                if r is None
                else (
                    f"{r['probe_share']:.1%} median/median, "
                    f"{r['best_probe_share']:.1%} best/best; of the start/end "
                    f"peak: {r['peak_share']:.1%}, {r['best_peak_share']:.1%}"
                    f"{note}"
                ),
            )
        )

    if "large" in workloads:
        share_target("large", "fnn-autodiff", LARGE_PEAK_SHARE)
    if "cnn" in workloads:
        # The FLOPs are the direct convolution's (step_flops), as for every
        # contender: on CPU fnn computes conv 2 by Winograd's F(2x2, 3x3),
        # with 16/36 of its multiplies, so this is the rate a direct
        # convolution would need to match fnn's time.
        note = "; direct-conv FLOPs (fnn's Winograd conv 2 does 16/36 of them)"
        for c in ("fnn-autodiff", "fnn-manual"):
            share_target("cnn", c, CNN_PEAK_SHARE, note)
    from benchmarks.contenders import family

    for w in workloads:
        if (w, "fnn-autodiff") not in ms:
            continue
        peers = [c for (ww, c) in ms if ww == w and family(c) == "peer"]
        if not peers:
            continue
        fnn = ms[(w, "fnn-autodiff")]
        unbeaten = [c for c in peers if ms[(w, c)] <= fnn]
        detail = (
            ("beats " + ", ".join(peers))
            if not unbeaten
            else (
                "not faster than "
                + ", ".join(
                    f"{c} (its time {ms[(w, c)] / fnn:.2f}x fnn's)" for c in unbeaten
                )
            )
        )
        out.append((f"{w}: fnn-autodiff faster than every peer", not unbeaten, detail))
    return out


TABLE_HEAD = (
    f"{'workload':<15} {'contender':<20} {'ms/step':>9} {'+-':>4} "
    f"{'vs jax':>7} {'GFLOP/s':>8} {'% peak':>7} {'best ms':>9} "
    f"{'%pk best':>8} {'% mm':>6}"
)


def print_rows(rows, file=None):
    for i, r in enumerate(rows):
        if i and r["workload"] != rows[i - 1]["workload"]:
            print(file=file)
        ratio = f"{r['ratio_to_jax']:.3f}" if r["ratio_to_jax"] else "-"
        print(
            f"{r['workload']:<15} {r['contender']:<20} {r['ms_per_step']:>9.3f} "
            f"{r['spread']:>4.0%} {ratio:>7} {r['gflops']:>8.2f} "
            f"{r['peak_share']:>7.1%} {r['best_ms']:>9.3f} "
            f"{r['best_peak_share']:>8.1%} "
            + (f"{r['probe_share']:>6.1%}" if r["probe_share"] else f"{'-':>6}"),
            file=file,
            flush=True,
        )


def print_report(env, peak, rows, skipped, targets, workloads):
    from benchmarks.contenders import DESCRIPTIONS

    print("fnn training-step benchmark")
    print(f"  cpu: {env['processor']} ({env['cores']} cores), devices {env['devices']}")
    print(f"  allocator: {env['allocator']}")
    print("  versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()))
    print(
        "  load average (1, 5, 15 min) at start: "
        + ", ".join(f"{x:.2f}" for x in env["load_average_at_start"])
        + "; at end: "
        + ", ".join(f"{x:.2f}" for x in env["load_average_at_end"])
    )
    for when in ("start", "end"):
        sizes = ", ".join(
            f"{n}: {g:.1f}" for n, g in env[f"matmul_gflops_{when}"].items()
        )
        print(
            f"  float32 matmul GFLOP/s at {when} (jitted n x n @ n x n, best of 7, "
            f"by n): {sizes}"
        )
    print(f"  float32 matmul peak: {peak:.1f} GFLOP/s (the best of those)")
    print()
    print(TABLE_HEAD)
    print("-" * len(TABLE_HEAD))
    print_rows(rows)
    print()
    print(
        "ms/step: median of all timed steps (each called from Python and blocked "
        "on); +-: half the interquartile range of the per-round medians, "
        "relative; vs jax: ms/step over plain JAX's; GFLOP/s: matmul/conv "
        "FLOPs per step over ms/step; % peak: that over the matmul peak; best "
        "ms: the fastest step; %pk best: the fastest step's GFLOP/s over the "
        "peak (best against best: the fairer share on a loaded machine); "
        f"% mm: GFLOP/s over the median rate of {PROBE}, a square matmul timed "
        "in the same rounds as the steps (compute-bound workloads only)."
    )
    for w in workloads:
        print(f"  {w.name}: {w.note}; {w.flop_formula()}")
    used = list(dict.fromkeys(r["contender"] for r in rows))
    for c in used:
        print(f"  {c}: {DESCRIPTIONS[c]}")
    if skipped:
        print("skipped:")
        for s in skipped:
            print(f"  {s['workload']} / {s['contender']}: {s['reason']}")
    print()
    print("targets:")
    for label, holds, detail in targets:
        verdict = {True: "HOLDS", False: "FAILS", None: "n/a"}[holds]
        print(f"  [{verdict:<5}] {label}: {detail}")


FIRST_COLUMNS = ("import", "init", "first", "second")


def measure_first_steps(workloads, names, rounds):
    """Seconds of import, init, first and second step per (workload,
    contender), one fresh worker process per measurement, rounds
    interleaved (the contenders' order rotating): ``(rows, skipped)``."""
    from benchmarks import harness
    from benchmarks.worker import Worker

    times, skipped = {}, {}
    for r in range(rounds):
        for w in workloads:
            order = names[r % len(names) :] + names[: r % len(names)]
            for c in order:
                if (w.name, c) in skipped:
                    continue
                worker = Worker()
                try:
                    reply = worker.ask(op="first", workload=w.name, contender=c)
                finally:
                    worker.close()
                if "skip" in reply:
                    skipped[(w.name, c)] = reply["skip"]
                    note(f"  {w.name}: skipping {c}: {reply['skip']}")
                    continue
                times.setdefault((w.name, c), []).append(reply)
            note(f"{w.name}: round {r + 1}/{rounds}")
    rows = []
    for (w, c), replies in times.items():
        row = {"workload": w, "contender": c, "runs": len(replies)}
        for col in FIRST_COLUMNS:
            row[col] = harness.median([x[col] for x in replies])
        row["to_first_step"] = harness.median([x["init"] + x["first"] for x in replies])
        row["all"] = [dict(x) for x in replies]
        rows.append(row)
    floors = {r["workload"]: r for r in rows if r["contender"] == "jax"}
    for row in rows:
        floor = floors.get(row["workload"])
        row["ratio_to_jax"] = (
            row["to_first_step"] / floor["to_first_step"] if floor else None
        )
    skipped = [
        {"workload": w, "contender": c, "reason": why}
        for (w, c), why in skipped.items()
    ]
    return rows, skipped


def first_step_targets(rows):
    """fnn's init + first step within ``FIRST_STEP_VS_JAX`` of plain JAX's."""
    by = {(r["workload"], r["contender"]): r for r in rows}
    out = []
    for w in dict.fromkeys(r["workload"] for r in rows):
        for c in ("fnn-autodiff", "fnn-manual"):
            label = f"{w}: {c} init + first step <= {FIRST_STEP_VS_JAX}x jax"
            mine, floor = by.get((w, c)), by.get((w, "jax"))
            if mine is None or floor is None:
                out.append((label, None, "not measured"))
                continue
            q = mine["to_first_step"] / floor["to_first_step"]
            out.append(
                (
                    label,
                    q <= FIRST_STEP_VS_JAX,
                    f"{q:.2f}x ({mine['to_first_step']:.2f} / "
                    f"{floor['to_first_step']:.2f} s)",
                )
            )
    return out


def first_step_main(args, workloads, names):
    """``--first-step``: the time-to-first-step table and its targets."""
    import json
    import os

    rounds = args.rounds or 3
    load_start = os.getloadavg()
    rows, skipped = measure_first_steps(workloads, names, rounds)
    load_end = os.getloadavg()
    targets = first_step_targets(rows)
    print("fnn time-to-first-step benchmark (each contender in a fresh process)")
    print(f"  allocator: {allocator.describe()}")
    print(
        "  load average (1, 5, 15 min) at start: "
        + ", ".join(f"{x:.2f}" for x in load_start)
        + "; at end: "
        + ", ".join(f"{x:.2f}" for x in load_end)
    )
    head = (
        f"{'workload':<15} {'contender':<20} {'import s':>9} {'init s':>8} "
        f"{'first s':>8} {'init+1st':>9} {'vs jax':>7} {'2nd ms':>8}"
    )
    print()
    print(head)
    print("-" * len(head))
    for i, r in enumerate(rows):
        if i and r["workload"] != rows[i - 1]["workload"]:
            print()
        ratio = f"{r['ratio_to_jax']:.2f}" if r["ratio_to_jax"] else "-"
        print(
            f"{r['workload']:<15} {r['contender']:<20} {r['import']:>9.2f} "
            f"{r['init']:>8.3f} {r['first']:>8.3f} {r['to_first_step']:>9.3f} "
            f"{ratio:>7} {r['second'] * 1e3:>8.2f}"
        )
    print()
    print(
        f"medians of {rounds} fresh processes per contender. import: its "
        "module and library; init: building the model, the optimizer state "
        "and the batch on the device (the backend already started); first: "
        "the first step, traced, compiled and run; init+1st: the median of "
        "their sums; vs jax: that over plain JAX's; 2nd ms: the second step."
    )
    if skipped:
        print("skipped:")
        for s in skipped:
            print(f"  {s['workload']} / {s['contender']}: {s['reason']}")
    print()
    print("targets:")
    for label, holds, detail in targets:
        verdict = {True: "HOLDS", False: "FAILS", None: "n/a"}[holds]
        print(f"  [{verdict:<5}] {label}: {detail}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "allocator": allocator.describe(),
                    "load_average_at_start": load_start,
                    "load_average_at_end": load_end,
                    "first_step": rows,
                    "skipped": skipped,
                    "targets": [
                        {"target": t, "holds": h, "detail": d} for t, h, d in targets
                    ],
                },
                f,
                indent=1,
            )
        note(f"wrote {args.json}")
    return 0


def main(argv=None):
    args = parse_args(argv)
    allocator.ensure(args.allocator)
    workloads, names = select(args)
    if args.list:
        from benchmarks.contenders import DESCRIPTIONS

        for w in workloads:
            print(f"{w.name}: {w.note}\n    {w.flop_formula()}")
        for c in names:
            print(f"{c}: {DESCRIPTIONS[c]}")
        return 0

    import json
    import os

    if args.first_step:
        return first_step_main(args, workloads, names)

    from benchmarks import harness

    env = harness.environment(allocator.describe())
    sizes = (
        (args.peak_size,)
        if args.peak_size
        else ((512, 1024) if args.quick else harness.PEAK_SIZES)
    )
    note(f"allocator: {env['allocator']}")
    env["matmul_gflops_start"] = harness.matmul_peak(sizes)
    rows, skipped, workers = [], [], {}
    try:
        for workload in workloads:
            r, s = measure(workload, names, args, PROBE_N, workers)
            for row in r:
                row["peak_share"] = row["best_peak_share"] = float("nan")
            print_rows(r, file=sys.stderr)  # progress; shares come at the end
            rows += r
            skipped += s
    finally:
        for worker in workers.values():
            worker.close()
    env["load_average_at_end"] = os.getloadavg()
    env["matmul_gflops_end"] = harness.matmul_peak(sizes)
    peak = max(*env["matmul_gflops_start"].values(), *env["matmul_gflops_end"].values())
    for r in rows:
        r["peak_share"] = r["gflops"] / peak
        r["best_peak_share"] = r["best_gflops"] / peak
    targets = evaluate_targets(rows)
    print_report(env, peak, rows, skipped, targets, workloads)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "environment": env,
                    "matmul_peak_gflops": peak,
                    "results": rows,
                    "skipped": skipped,
                    "targets": [
                        {"target": t, "holds": h, "detail": d} for t, h, d in targets
                    ],
                    "flops": {
                        w.name: {
                            "step_flops": w.step_flops(),
                            "formula": w.flop_formula(),
                        }
                        for w in workloads
                    },
                },
                f,
                indent=1,
            )
        note(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
