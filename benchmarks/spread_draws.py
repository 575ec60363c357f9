"""Why the Schraivogel ensemble's spread-versus-error Spearman moved between two runs of the same
networks: compare the ``pdae_ensemble`` rows of two cell-level interaction tables
(``per_double.csv`` of ``benchmarks/interactions_cells.py``), read from files or from git
(``REV:PATH``).

Both runs trained the same networks (same seeds, same predictions of the held-out doubles: the
errors must agree); only the noise the members' predicted cells were drawn with differs (before
commit b3c6d81 each target got its own noise, after it every target of a network shares it). The
script prints, for each run, the spread's Spearman with the error and with the doubles' observed
cell counts, and the spread against the error with the cell counts taken out; and the Spearman of
the two runs' spreads with each other (how much of the spread's ranking is the noise draw)::

    python benchmarks/spread_draws.py b3c6d81^:benchmarks/results/schraivogel20_interactions/per_double.csv \\
        b3c6d81:benchmarks/results/schraivogel20_interactions/per_double.csv \\
        --out benchmarks/results/spread_draws.md
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys

import pandas as pd
from scipy.stats import spearmanr

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _report import emit  # noqa: E402

from pdae_core.eval.pseudobulk.interaction_scores import uncertainty_summary  # noqa: E402

FIGURES = ("spread_error_spearman", "error_cells_spearman", "spread_error_spearman_given_cells", "spread_cv")


def read_rows(spec: str) -> pd.DataFrame:
    """A per_double.csv from a path, or from git as ``REV:PATH``."""
    if os.path.isfile(spec):
        return pd.read_csv(spec)
    if ":" not in spec:
        raise SystemExit(f"{spec}: no such file (give a path, or REV:PATH to read it from git).")
    try:
        text = subprocess.run(["git", "show", spec], check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise SystemExit(f"{spec}: git could not read it ({getattr(e, 'stderr', e)}).") from None
    return pd.read_csv(io.StringIO(text))


def report(runs: dict[str, pd.DataFrame]) -> str:
    ens = {k: v[v.model == "pdae_ensemble"].set_index("double") for k, v in runs.items()}
    (a, ra), (b, rb) = ens.items()
    common = ra.index.intersection(rb.index)
    if len(common) < 3:
        raise SystemExit("The two tables share fewer than 3 pdae_ensemble doubles: not runs of the same networks.")
    ra, rb = ra.loc[common], rb.loc[common]
    same_err = bool(((ra["error_l2"] - rb["error_l2"]).abs() <= 1e-6 * ra["error_l2"].abs().max()).all())
    lines = [f"# The ensemble's spread in two runs of the same networks ({len(common)} held-out (seed, double) pairs)",
             "", f"- errors of the two runs {'agree' if same_err else 'DIFFER (not the same networks)'}",
             f"- Spearman of the two runs' spreads: {spearmanr(ra['spread'], rb['spread'])[0]:.3f}",
             "", "| run | spread vs cells | " + " | ".join(FIGURES) + " |", "|---|---|" + "---|" * len(FIGURES)]
    for name, r in ((a, ra), (b, rb)):
        fig = uncertainty_summary(r.reset_index(), "pdae_ensemble").set_index("figure")
        cells = [f"{fig.loc[f, 'value']:.3f} [{fig.loc[f, 'lo']:.3f}, {fig.loc[f, 'hi']:.3f}]" for f in FIGURES]
        lines.append(f"| {name} | {spearmanr(r['spread'], r['n_cells'])[0]:.3f} | " + " | ".join(cells) + " |")
    lines += ["", "[95% bootstrap interval over doubles]. spread vs cells: Spearman of the spread with the doubles' "
              "observed cell counts, which the networks never see; a chance correlation with them carries into "
              "spread_error_spearman, because the error follows the cell counts (error_cells_spearman)."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("before", help="per_double.csv of the first run (a path, or REV:PATH)")
    ap.add_argument("after", help="per_double.csv of the second run")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    emit(report({args.before: read_rows(args.before), args.after: read_rows(args.after)}), args.out)


if __name__ == "__main__":
    main()
