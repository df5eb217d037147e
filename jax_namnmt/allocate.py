"""Allocate general and pair-specific neurons from an importance file and print a summary.

    python -m jax_namnmt.allocate --importance FILE --out masks.npz [--rho 0.9 --k 0.7 --variant pair]
"""

from __future__ import annotations

from jax_namnmt import cli, workflow
from jax_namnmt.config import MODULE_SETS, NORMALIZATIONS, MethodConfig


def main() -> int:
    p = cli.parser("Importance-based neuron allocation", config=False)
    defaults = MethodConfig()
    p.add_argument("--importance", required=True, help="importance_<method>.npz written by jax_namnmt.importance")
    p.add_argument("--out", required=True, help="mask file to write (.npz)")
    p.add_argument("--rho", type=float, default=defaults.rho, help="fraction of general neurons per module")
    p.add_argument("--k", type=float, default=defaults.k, help="threshold factor of the maximum importance")
    p.add_argument("--variant", choices=("pair", "source", "target", "separate"), default=defaults.variant)
    p.add_argument("--normalize", choices=NORMALIZATIONS, default=defaults.normalize,
                   help="per-pair normalisation of importance before allocation (pair_mean: beyond the paper)")
    p.add_argument("--modules", choices=MODULE_SETS, default=defaults.modules,
                   help="no_embedding_inputs: the first layers' self-attention q/k/v stay shared (original code)")
    args = p.parse_args()
    path = workflow.run_allocate(args.importance, args.out, args.rho, args.k, args.variant, args.quiet,
                                 normalize=args.normalize, modules=args.modules)
    print(f"masks: {path}")
    return 0


if __name__ == "__main__":
    cli.run(main)
