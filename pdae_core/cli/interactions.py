"""``pdae interactions``: predict every pair of the measured singles, score how each pair
interacts (synergy, buffering, non-additivity, with the spread across an ensemble's members)
and rank the pairs to test next; writes one CSV row per pair. With ``--pair A+B``: that one
pair, gene by gene (where it departs from the sum of its parts); one CSV row per gene."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from ..errors import DataError
from .common import (
    EXIT_OK,
    HelpFormatter,
    add_data_args,
    add_threads_arg,
    check_output_not_input,
    finite_float,
    load_data,
    positive_int,
    printable,
)

EXAMPLES = """\
examples:
  # every pair of the demo model's singles, the pairs to test next first
  pdae interactions checkpoints/norman19_devel --dataset norman19_devel --out pairs.csv

  # an ensemble (pdae train --ensemble 5): the strongest predicted synergies, with their spread
  pdae interactions ens/ --data cells.h5ad --score synergy --out pairs.csv

  # one pair, gene by gene: where KLF1+MAP2K6 departs from the sum of its parts
  pdae interactions checkpoints/norman19_devel --dataset norman19_devel --pair KLF1+MAP2K6 --out genes.csv

Columns: pair, a, b, c1, c2, magnitude (sqrt(c1^2 + c2^2): > 1 synergy, < 1 buffering;
an exactly additive pair has 1.41), dominance, normalised_residual (||dAB - dA - dB|| /
||dA + dB||: 0 = additive), effect (||dAB||), top_departures (the three genes whose predicted
change departs most from the sum of the parts; --pair gives every gene), *_spread (standard deviation across the
members of an ensemble), test_next (normalised residual + kappa x its spread), measured,
held_out, in_training, observed_* (from the cells of a measured pair); for a cross-fitted
ensemble (pdae train --ensemble 5 --cross-fit) also magnitude_lo/_hi and
normalised_residual_lo/_hi, split-conformal intervals at --level calibrated on the
training doubles, and, when at least 20 of those doubles are measured in the data,
magnitude_stacked, normalised_residual_stacked (with _lo/_hi) and test_next_stacked: the
model's metrics corrected by the measured doubles (--estimate ranks by them). With --cells N
(a cross-fitted ensemble) also magnitude_lo_cells/_hi_cells and normalised_residual_lo_cells/
_hi_cells: the range an experiment measuring each pair with N cells would show (the noise of N
cells added to the model's error).

With --pair A+B, one row per gene instead (largest departure first): gene, change_a, change_b,
sum_of_parts, predicted_pair, departure (predicted_pair - sum_of_parts), departure_spread (across
an ensemble's networks), kind (stronger, weaker, reversed, new: against the sum of the parts);
for a cross-fitted ensemble departure_lo/_hi at --level; for a measured pair observed_pair,
observed_departure and observed_kind. A cross-fitted ensemble scored against the observed singles
reweights each gene's departure by how its networks fared on the training doubles they did not
see (departure = w * network_departure + v * sum_of_parts; predicted_pair = sum_of_parts +
departure); the networks' own are kept as network_departure and network_pair."""


def add_parser(sub: Any) -> None:
    """Register ``interactions``."""
    from ..eval.pair_screen import SCORES

    p = sub.add_parser(
        "interactions",
        help="predict every pair of the measured singles and rank how they interact",
        description="Predict every pair A+B of the perturbations the model saw alone, score each pair's "
        "genetic interaction (Norman et al. 2019: magnitude, dominance, normalised non-additive residual) "
        "with its spread across an ensemble's members, mark the pairs measured and held out, and rank them.",
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint directory written by `pdae train`")
    add_data_args(p)
    p.add_argument("--score", choices=list(SCORES), default="test_next",
                   help="ranking: test_next (predicted non-additivity + kappa x uncertainty), synergy, buffering, "
                   "least_additive, uncertain")
    p.add_argument("--estimate", choices=["auto", "model", "stacked"], default="auto",
                   help="what the ranking reads: the model's own metrics, or the stacked estimate (a cross-fitted "
                   "ensemble's metrics corrected by the measured training doubles); auto: stacked when there is one")
    p.add_argument("--single-effects", choices=["auto", "observed", "model"], default="auto",
                   help="what a pair's predicted change is compared with: the observed changes of its two singles "
                   "(as the benchmarks score predictions) or the model's predictions of them (its own second "
                   "difference); auto: observed when the data measured every single")
    p.add_argument("--kappa", type=finite_float, default=1.0, metavar="K",
                   help="weight of the uncertainty in the test_next score")
    p.add_argument("--level", type=finite_float, default=0.8, metavar="P",
                   help="coverage of the intervals of a cross-fitted ensemble (between 0 and 1)")
    p.add_argument("--genes", default="expressed", metavar="{expressed,all}",
                   help="genes the metrics use: expressed in control (as the paper) or all")
    p.add_argument("--n-cells", type=positive_int, default=512, metavar="N",
                   help="cells moved per pair: that many control cells, or each control cell several times "
                   "(fresh decoder noise) when there are fewer; an ensemble's networks share them (each moves "
                   "N / networks, at least 128)")
    p.add_argument("--cells", type=positive_int, default=None, metavar="N",
                   help="cross-fitted ensemble: also the range each pair's metrics would show in an experiment "
                   "that measures the pair with N cells (plan how many cells to sequence)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the cell subsample and the decoder noise")
    add_threads_arg(p)
    p.add_argument("--top", type=int, default=10, metavar="N", help="pairs printed (0: none)")
    p.add_argument("--trust-modified", action="store_true",
                   help="load the checkpoint even if it was modified after saving (with a warning)")
    p.add_argument("--pair", default=None, metavar="A+B",
                   help="only this pair, gene by gene: writes where it departs from the sum of its parts (one row "
                   "per gene) instead of the screen")
    p.add_argument("--out", required=True, metavar="PAIRS.csv", help="output CSV (replaced if it exists)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """``pdae interactions``."""
    from ..eval.pair_screen import rank_pairs, screen_pairs
    from ..models.checkpoint import load_checkpoint
    from .predict import prepare_source

    out = Path(args.out)
    check_output_not_input(out, {"--data": args.data, "CHECKPOINT": args.checkpoint})
    if out.is_dir():
        raise DataError(f"--out {out} is a directory; give a file name such as pairs.csv.")
    if args.genes not in ("expressed", "all"):
        raise DataError(f"--genes must be 'expressed' or 'all', got {args.genes!r}.")
    t0 = time.perf_counter()
    model = load_checkpoint(args.checkpoint, trust_modified=args.trust_modified)
    if args.estimate == "stacked" and getattr(getattr(model, "calibration", None), "out_of_fold", None) is None:
        raise DataError(f"--estimate stacked needs a cross-fitted ensemble calibrated with its out-of-fold metrics "
                        f"(pdae train --ensemble 5 --cross-fit); {args.checkpoint} is not one. Use --estimate auto.")
    adata, source = load_data(args, profiles_ok=model.accepts_changes)
    if model.accepts_changes:  # a table of changes from control: the control is a zero row
        from ..models.pdae_profile import with_control_row

        adata = with_control_row(adata, model.registry.perturbation_key, model.registry.control_label)
    adata = prepare_source(adata, model, source)

    if args.pair is not None:
        return run_pair(args, model, adata, source, out, t0)

    def progress(done: int, total: int) -> None:
        print(f"\r  {done}/{total} pairs", end="", flush=True)

    table = screen_pairs(model, adata, n_cells=args.n_cells, genes=args.genes, kappa=args.kappa, seed=args.seed,
                         progress=progress, level=args.level, single_effects=args.single_effects, cells=args.cells)
    print()
    table = rank_pairs(table, args.score, args.estimate)
    write_csv(table, out)
    a = table.attrs
    members = f"an ensemble of {a['n_members']} networks" if a["n_members"] > 1 else "one network (no spread)"
    if "interval_level" in a:
        members += (f", intervals at {a['interval_level']:.0%} calibrated on {a['calibration_doubles']} training "
                    "doubles")
    print(printable(
        f"{len(table)} pairs of {len(set(table['a']) | set(table['b']))} singles from {source}: "
        f"{int(table['measured'].sum())} measured ({int(table['held_out'].sum())} held out from training); "
        f"{members}; {a['n_genes']} genes ({a['genes']}); pairs scored against the {a['single_effects']} singles; "
        f"{a['n_source_cells']} moved cells per pair"
        f"{' per network' if a['n_members'] > 1 else ''}; "
        f"{time.perf_counter() - t0:.1f} s in all."
    ))
    if "interval_note" in a:
        print(printable(f"No intervals: {a['interval_note']}; --single-effects {a['calibrated_single_effects']} "
                        "scores the pairs as they were calibrated."))
    if "cells" in a:
        print(f"Ranges at {a['interval_level']:.0%} of what {int(a['cells'])} cells per pair would show: the *_lo_cells "
              "and *_hi_cells columns.")
    elif "cells_note" in a:
        print(printable(f"No ranges for --cells: {a['cells_note']}."))
    if "stacked_check" in a:
        chk = ", ".join(f"{m.replace('_', ' ')} {c['model']:.2f} -> {c['stacked']:.2f}"
                        for m, c in a["stacked_check"].items())
        print(f"Stacked estimate from {a['stacked_doubles']} measured training doubles (Spearman with the observed "
              f"metric on them, model alone -> stacked, out of fold: {chk}).")
    elif "stacked_note" in a:
        print(printable(f"No stacked estimate: {a['stacked_note'].removeprefix('no stacked estimate: ')}."))
    stacked = a.get("estimate") == "stacked"
    reads = "the stacked estimate" if stacked else "the model's own metrics"
    print(f"Ranked by {args.score} on {reads}.")
    if args.top > 0:
        cols = ["rank", "pair", "magnitude", "magnitude_spread", "normalised_residual",
                "normalised_residual_spread", "test_next", "measured", "held_out"]
        if a["n_members"] == 1:
            cols = [c for c in cols if not c.endswith("_spread")]
        if "interval_level" in a:
            cols[cols.index("normalised_residual") + 1: cols.index("normalised_residual") + 1] = [
                "normalised_residual_lo", "normalised_residual_hi"]
        if stacked:
            cols[cols.index("test_next"): cols.index("test_next") + 1] = [
                "magnitude_stacked", "normalised_residual_stacked", "test_next_stacked"]
        print(f"Top {min(args.top, len(table))} by {args.score}:")
        text = table[cols].head(args.top).to_string(index=False, float_format=lambda v: f"{v:.3f}")
        for line in text.splitlines():  # names come from files: control characters escaped
            print(printable(line))
    print(f"Wrote {out}.")
    return EXIT_OK


def write_csv(table: Any, out: Path) -> None:
    """``table`` to ``out`` through a temporary file: an existing file is replaced only when the
    new one is complete."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        table.to_csv(tmp, index=False)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()


def run_pair(args: argparse.Namespace, model: Any, adata: Any, source: str, out: Path, t0: float) -> int:
    """``pdae interactions --pair A+B``: the pair's interaction and its per-gene departure."""
    from ..eval.departure import (
        agreement_in_words,
        departure_agreement,
        describe_departures,
        recalibration_in_words,
    )
    from ..eval.pair_screen import pair_interaction

    sep = model.registry.separator
    parts = [p.strip() for p in str(args.pair).split(sep)]
    if len(parts) != 2 or not all(parts):
        raise DataError(f"--pair must name two perturbations joined by {sep!r} (e.g. A{sep}B), got {args.pair!r}.")
    res = pair_interaction(model, adata, parts[0], parts[1], n_cells=args.n_cells, genes=args.genes, seed=args.seed,
                           level=args.level, single_effects=args.single_effects)
    table = res.genes_table
    write_csv(table, out)
    pred, spread = res.predicted, res.spread

    def pm(key: str) -> str:
        return f"{pred[key]:.2f}" + (f" +- {spread[key]:.2f}" if res.n_members > 1 else "")

    where = "held out from training" if res.held_out else "used in training" if res.in_training else "measured"
    print(printable(f"{res.pair} from {source}: {res.description[:1].upper()}{res.description[1:]}"))
    print(printable(f"Predicted magnitude {pm('magnitude')}, non-additivity {pm('normalised_residual')}; {res.n_genes} "
                    f"genes ({res.genes}), against the {res.single_effects} singles; "
                    f"{time.perf_counter() - t0:.1f} s in all."))
    if res.observed is not None:
        print(printable(f"Observed ({where}): {res.observed_description} Non-additivity "
                        f"{res.observed['normalised_residual']:.2f}."))
        print(printable(agreement_in_words(departure_agreement(table), res.in_training)))
    print(printable(describe_departures(table)))
    if res.recalibration is not None:
        print(printable(recalibration_in_words(res.recalibration)))
    if args.top > 0:
        cols = [c for c in ("gene", "sum_of_parts", "predicted_pair", "departure", "departure_spread", "departure_lo",
                            "departure_hi", "kind", "observed_departure") if c in table.columns]
        if res.n_members == 1:
            cols.remove("departure_spread")
        print(f"Top {min(args.top, len(table))} genes by departure:")
        text = table[cols].head(args.top).to_string(index=False, float_format=lambda v: f"{v:.3f}")
        for line in text.splitlines():
            print(printable(line))
    print(f"Wrote {out}.")
    return EXIT_OK
