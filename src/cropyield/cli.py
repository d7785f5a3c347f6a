"""The ``cropyield`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from ._version import __version__


def _print_summary(summary: dict, out: str) -> None:
    acc = summary.get("accuracy", {})
    t = summary.get("timings_s", {})

    def fmt(v, spec=".3f"):
        return "n/a" if v is None else format(v, spec)

    lines = [
        "",
        f"cropyield {summary['cropyield_version']} demo  (seed {summary['seed']}, size {summary['size']})",
        f"  fields {summary['n_fields']}  farmers {summary['n_farmers']}  scenes {summary['n_scenes']}"
        f"  field-scene observations {summary['n_observations']}",
        f"  read: {summary['requests']} requests, {summary['bytes_read'] / 1e6:.1f} MB",
        "",
        "  accuracy against the synthetic truth (held-out fields)",
        f"    crop identification      {fmt(acc.get('crop_id_accuracy'))}  (n={acc.get('crop_id_n', 0)};"
        f" imagery + declarations), imagery only {fmt(acc.get('crop_id_accuracy_image_only'))}",
        f"    double crops split       {fmt(acc.get('double_crop_split_rate'))}",
        f"    yield R2                 {fmt(acc.get('yield_r2'))}",
        f"    yield RMSE               {fmt(acc.get('yield_rmse_t_ha'), '.2f')} t/ha "
        f"({fmt(acc.get('yield_rmse_pct'), '.1f')} %), bias {fmt(acc.get('yield_bias_t_ha'), '+.2f')} t/ha",
        f"    P10-P90 coverage         {fmt(acc.get('p10_p90_coverage'))}  (target 0.80)",
        *[f"      {c:<22} n={v['n']:<4} R2 {v['r2']:+.2f}  ceiling {fmt(v.get('r2_ceiling'), '+.2f')}"
          f"  RMSE {v['rmse_t_ha']:.2f} t/ha  bias {fmt(v.get('bias_t_ha'), '+.2f')}"
          f"  coverage {v['p10_p90_coverage']:.2f}"
          for c, v in sorted(acc.get("yield_per_crop", {}).items())],
        f"    field-seasons estimated  {acc.get('yield_n_estimated', 0)}, withheld (NaN + flags) "
        f"{acc.get('yield_n_withheld_nan', 0)}",
        "",
        "  credit decisions per farmer  "
        + "  ".join(f"{k}: {v}" for k, v in sorted(summary.get("decisions", {}).items())),
        f"    referral rate {fmt(summary.get('referral_rate'), '.2f')} (target <= 0.30); "
        "referring codes (farmers): "
        + (", ".join(f"{k} {v}" for k, v in summary.get("referral_reasons", {}).items())
           or "none"),
        f"    over-lending share {fmt(summary.get('over_lending_share'), '.3f')} (approved "
        "limits above 80 % of the TRUE output value; target 0)",
        f"    credit policy {summary.get('credit_policy_version')}: "
        f"{summary.get('excluded_fields_n', 0)} doubtful field(s) left out of the limits of "
        f"{summary.get('farmers_with_excluded_fields', 0)} farmer(s); wrong crop declarations "
        f"(truth): {summary.get('wrong_declaration_farmers', 0)} farmer(s), "
        f"{summary.get('wrong_declaration_approved', 0)} approved on their other fields, "
        f"{summary.get('wrong_declaration_in_limit', 0)} limit(s) resting on one (target 0)",
        f"  in-season alerts on {summary.get('alerts_as_of')}  "
        + ("  ".join(f"{k}: {v}" for k, v in sorted(summary.get("alerts", {}).items())) or "none"),
        "  stage timings (s)  " + "  ".join(f"{k} {v:.1f}" for k, v in t.items()),
        f"  results in {out}/ (estimates.parquet, credit_profiles.json, alerts.parquet, summary.json, demo.png)",
        "",
    ]
    print("\n".join(lines))


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    t0 = time.perf_counter()

    def progress(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    summary = run_demo(args.out, seed=args.seed, size=args.size, cache=not args.no_cache,
                       crop_cut_fraction=args.crop_cuts, progress=progress)
    _print_summary(summary, args.out)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cropyield`` command."""
    parser = argparse.ArgumentParser(
        prog="cropyield",
        description="Sentinel-2 imagery to per-field crop yield, output value and credit inputs.",
    )
    parser.add_argument("--version", action="version", version=f"cropyield {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="run the whole chain offline on a synthetic county served by real servers",
        description="Build (or reuse from the cache) a synthetic Sentinel-2 world, serve it "
        "through a local STAC API and a Range HTTP server, and run search → indices → series "
        "→ crops → yield and value → credit through the public API.",
    )
    demo.add_argument("--out", default="cropyield-demo", help="output folder (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0, help="world seed (default: %(default)s)")
    demo.add_argument("--size", default="small", choices=["tiny", "small", "medium", "county"],
                      help="world size (default: %(default)s; 'small' runs in < 3 min on 2 cores)")
    demo.add_argument("--crop-cuts", type=float, default=0.1,
                      help="share of fields with crop-cut yields used for calibration "
                      "(default: %(default)s)")
    demo.add_argument("--no-cache", action="store_true", help="regenerate the world")
    demo.set_defaults(func=_demo)
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
