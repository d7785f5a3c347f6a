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
          + (f" (observed {v['r2_ceiling_observed']:+.2f})"
             if v.get("r2_ceiling_observed") is not None else "")
          + f"  RMSE {v['rmse_t_ha']:.2f} t/ha  bias {fmt(v.get('bias_t_ha'), '+.2f')}"
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


def _latency_faults(latency_ms: float):
    """A fault script that delays every request by ``latency_ms`` (object-storage latency)."""
    from ._http import FaultScript

    class _Latency(FaultScript):
        def next(self, path: str, method: str = "GET") -> str | None:  # noqa: D102
            return f"sleep:{latency_ms / 1000.0:g}"

    return _Latency() if latency_ms > 0 else None


def _serve(args: argparse.Namespace) -> int:
    import signal
    import threading

    from . import servers, synthetic
    from .demo import DEMO_SIZES, demo_world

    if args.size not in DEMO_SIZES:
        print(f"cropyield serve: --size must be one of {sorted(DEMO_SIZES)}", file=sys.stderr)
        return 2
    config = synthetic.WorldConfig(seed=args.seed, **DEMO_SIZES[args.size])
    world = demo_world(config, progress=lambda i, n, what="": print(
        f"generating {what} {i}/{n}", file=sys.stderr, flush=True))
    cols = [c for c in ("field_id", "farmer_id", "crop", "declared_area_mu") if c in world.fields]
    fields = world.fields[cols + ["geometry"]]
    if args.fields:
        fields.to_file(args.fields, driver="GPKG" if str(args.fields).endswith(".gpkg") else None)
    stop = threading.Event()

    def on_signal(signum, frame):  # noqa: ARG001
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with servers.serve_world(world, cog_faults=_latency_faults(args.latency_ms)) as srv:
            print(f"STAC_URL={srv.stac_url}", flush=True)
            print(f"COG_URL={srv.cog_url}", flush=True)
            print(f"START={config.start}", flush=True)
            print(f"END={config.end}", flush=True)
            if args.fields:
                print(f"FIELDS={args.fields}", flush=True)
            print(f"serving {len(fields)} fields' world until interrupted (Ctrl-C)",
                  file=sys.stderr, flush=True)
            while not stop.wait(0.5):
                pass
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    print("servers stopped", file=sys.stderr, flush=True)
    return 0


def _read_fields(path: str, id_col: str):
    import geopandas as gpd

    if str(path).lower().endswith((".parquet", ".geoparquet")):
        fields = gpd.read_parquet(path)
    else:
        fields = gpd.read_file(path)
    if id_col not in fields.columns:
        raise SystemExit(f"cropyield estimate: {path} has no column {id_col!r} (columns: "
                         f"{[c for c in fields.columns if c != 'geometry']}); "
                         "name the id column with --id-col")
    return fields


def _read_model(path: str | None):
    if path is None:
        return None
    import json
    from pathlib import Path

    from .yieldmodel import YieldModel

    d = json.loads(Path(path).read_text(encoding="utf-8"))
    if isinstance(d, dict) and "kind" in d:
        return YieldModel.from_dict(d)
    if isinstance(d, dict):  # {crop: model}
        return {str(k): YieldModel.from_dict(v) for k, v in d.items()}
    raise SystemExit(f"cropyield estimate: {path} is not a yield model JSON "
                     "(YieldModel.to_json, or {crop: model})")


def _read_table(path: str | None, what: str, ids):
    """A per-field table (``--weather``, ``--covariates``) from Parquet or CSV; ``field_id``
    cast to the type of the fields' ids ``ids``, ``time`` (weather) read as dates."""
    if path is None:
        return None
    import pandas as pd

    try:
        if str(path).lower().endswith((".parquet", ".pq")):
            df = pd.read_parquet(path)
        else:
            df = pd.read_csv(path, dtype={"field_id": str})
    except (OSError, ValueError) as exc:
        raise SystemExit(f"cropyield estimate: cannot read {what} table {path}: {exc}") from None
    if "field_id" not in df.columns:
        raise SystemExit(f"cropyield estimate: {what} table {path} has no 'field_id' column "
                         f"(columns: {list(df.columns)})")
    try:
        df["field_id"] = df["field_id"].astype(ids.dtype)
    except (TypeError, ValueError):
        raise SystemExit(f"cropyield estimate: the field_id values of {path} are not of the "
                         f"fields' id type ({ids.dtype})") from None
    if "time" in df.columns:
        df["time"] = pd.to_datetime(df["time"])
    return df


def _read_policy(path: str | None):
    if path is None:
        return None
    from pathlib import Path

    from .credit import Policy

    return Policy.from_json(Path(path).read_text(encoding="utf-8"))


def _estimate(args: argparse.Namespace) -> int:
    from .errors import CropYieldError
    from .pipeline import estimate

    if args.workers and args.scheduler:
        print("cropyield estimate: give --workers or --scheduler, not both", file=sys.stderr)
        return 2
    fields = _read_fields(args.fields, args.id_col)
    model, policy = _read_model(args.model), _read_policy(args.policy)
    ids = fields[args.id_col]
    bar = False if args.quiet else None   # None: a bar only when stderr is a terminal
    client = cluster = None
    try:
        if args.workers or args.scheduler:
            try:
                from distributed import Client, LocalCluster
            except ImportError:  # pragma: no cover - optional extra
                print("cropyield estimate: --workers/--scheduler need the [distributed] extra "
                      "(pip install 'cropyield[distributed]')", file=sys.stderr)
                return 2
            if args.scheduler:
                client = Client(args.scheduler)
            else:
                cluster = LocalCluster(n_workers=args.workers,
                                       threads_per_worker=args.threads_per_worker,
                                       processes=True, dashboard_address=":0")
                client = Client(cluster)
            if not args.quiet:
                print(f"dask dashboard: {client.dashboard_link}", file=sys.stderr, flush=True)
        result = estimate(
            fields, args.start, args.end, catalog=args.catalog, collection=args.collection,
            region=args.region, max_cloud=args.max_cloud, model=model, prices=args.prices,
            policy=policy, id_col=args.id_col, min_coverage_frac=args.min_coverage_frac,
            declared_prior_odds=args.declared_prior_odds, client=client, store=args.out,
            partition_size=args.partition_size, restart=args.restart, collect=False,
            progress_bar=bar, weather=_read_table(args.weather, "weather", ids),
            covariates=_read_table(args.covariates, "covariates", ids))
    except CropYieldError as exc:
        print(f"cropyield estimate: {exc}", file=sys.stderr)
        return 2
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    s = result.summary
    if s["n_partitions_skipped"]:
        print(f"resumed: skipped {s['n_partitions_skipped']} of {s['n_partitions']} partitions "
              f"already complete ({s['n_fields_skipped']} fields)", file=sys.stderr)
    if not args.quiet:
        print(f"cropyield {__version__} estimate: {s['n_fields']} fields, {s['n_scenes']} scenes, "
              f"{s['n_partitions']} partitions ({s['n_partitions_skipped']} skipped), "
              f"{s['n_estimates']} field-seasons, read {s['bytes_read'] / 1e6:.1f} MB in "
              f"{s['requests']} requests; credit decisions "
              + (" ".join(f"{k}: {v}" for k, v in sorted(s["decisions"].items())) or "none")
              + f"\n  results in {args.out}/ (estimates.parquet, observations.parquet, "
              "series.parquet, phenology.parquet, crops.parquet, scenes.parquet, "
              "credit_profiles.json, summary.json)")
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
    # -v is accepted after the subcommand too (SUPPRESS: absent, it keeps the count above)
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                         help="more logging")
    demo = sub.add_parser(
        "demo", parents=[verbose],
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

    est = sub.add_parser(
        "estimate", parents=[verbose],
        help="run the whole chain on your fields (resumable; local or on a dask cluster)",
        description="Search a STAC catalog for Sentinel-2 L2A scenes over FIELDS, compute "
        "per-field observations, series, phenology, crops, yield and value and credit "
        "profiles. Results go to --out as they complete (one partition of fields at a time); "
        "re-running the same command resumes, --restart starts over.")
    est.add_argument("fields", metavar="FIELDS",
                     help="fields file (GeoPackage, GeoParquet, GeoJSON, Shapefile) with a "
                     "field id column and optional farmer_id, crop, declared_area_mu")
    est.add_argument("--start", required=True, help="first date (YYYY-MM-DD, UTC)")
    est.add_argument("--end", required=True, help="last date (YYYY-MM-DD, UTC, inclusive)")
    est.add_argument("--catalog", default="earth-search",
                     help="earth-search, planetary-computer or a STAC API URL "
                     "(default: %(default)s)")
    est.add_argument("--out", required=True, help="output folder or fsspec URL")
    est.add_argument("--collection", default=None, help="STAC collection (default: the "
                     "catalog's Sentinel-2 L2A collection)")
    est.add_argument("--region", default="north_china_plain",
                     help="crop-calendar and price region (default: %(default)s)")
    est.add_argument("--prices", default=None, metavar="TOML", help="price table (TOML)")
    est.add_argument("--model", default=None, metavar="JSON",
                     help="yield model (YieldModel.to_json, or {crop: model})")
    est.add_argument("--policy", default=None, metavar="JSON", help="credit policy (JSON)")
    est.add_argument("--weather", default=None, metavar="FILE",
                     help="daily weather per field (Parquet or CSV: field_id, time, tmin_c, "
                     "tmax_c, radiation_mj_m2, rain_mm) for a --model fitted with weather")
    est.add_argument("--covariates", default=None, metavar="FILE",
                     help="season covariates (Parquet or CSV: field_id[, season][, crop], wx_* "
                     "columns, e.g. the crop-model index) for a --model fitted with them")
    est.add_argument("--max-cloud", type=float, default=None,
                     help="skip scenes with more tile cloud cover (%%)")
    est.add_argument("--id-col", default="field_id", help="field id column (default: %(default)s)")
    est.add_argument("--min-coverage-frac", type=float, default=0.5,
                     help="leave edge pixels less covered than this out of field means "
                     "(default: %(default)s, as the demo)")
    est.add_argument("--declared-prior-odds", type=float, default=10.0,
                     help="prior odds of the declared crop (default: %(default)s, as the demo)")
    est.add_argument("--workers", type=int, default=0,
                     help="run on a local dask cluster of N worker processes")
    est.add_argument("--threads-per-worker", type=int, default=1,
                     help="threads per local worker (default: %(default)s)")
    est.add_argument("--scheduler", default=None, metavar="ADDRESS",
                     help="run on an existing dask cluster (tcp://host:8786)")
    est.add_argument("--partition-size", type=int, default=None,
                     help="most fields per partition (default: 2000)")
    est.add_argument("--restart", action="store_true",
                     help="discard what --out holds and start over")
    est.add_argument("--quiet", action="store_true", help="no progress bar, no summary")
    est.set_defaults(func=_estimate)

    srv = sub.add_parser(
        "serve", parents=[verbose],
        help="serve the synthetic demo world offline (STAC API + COG server) until Ctrl-C",
        description="Build (or reuse) the synthetic demo world, serve it on 127.0.0.1 through "
        "a STAC API and a Range HTTP server, write its registered fields to --fields and print "
        "STAC_URL=..., START=..., END=... Runs until interrupted.")
    srv.add_argument("--size", default="tiny", choices=["tiny", "small", "medium", "county"],
                     help="world size (default: %(default)s)")
    srv.add_argument("--seed", type=int, default=0, help="world seed (default: %(default)s)")
    srv.add_argument("--fields", default=None, metavar="F.gpkg",
                     help="write the world's fields here (GeoPackage)")
    srv.add_argument("--latency-ms", type=float, default=0.0,
                     help="delay every COG request by this much (object storage is not "
                     "localhost)")
    srv.set_defaults(func=_serve)
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
