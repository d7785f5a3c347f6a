"""A bank-side risk service that consumes cropyield as a dependency (pure Python).

It reads the output folder of ``cropyield demo --out DIR``:

* ``DIR/credit_profiles.json`` (a JSON list of ``CreditProfile.to_dict()``), re-validated
  record by record with ``CreditProfile.from_dict`` (schema version, types, ranges, and
  the fail-closed rule that only approved profiles carry a limit); or, when that file is
  absent, ``DIR/estimates.parquet``, assessed here with ``cropyield.credit.assess``.

Then it applies the bank's own rules on top of the library's suggestion:

* a **portfolio cap**: total exposure may not exceed ``--portfolio-cap`` CNY; approved
  profiles are funded in a deterministic order (farmer id) until the cap is used up;
* a **maximum tenor**: an approval whose repayment window ends more than ``--max-tenor-days``
  after ``as_of`` is referred to a loan officer.

Usage::

    python examples/risk_service.py DIR [--portfolio-cap 1000000] [--max-tenor-days 400]

Prints one JSON document (decisions per farmer and the portfolio total) to stdout; exits
with status 2 when a profile fails validation.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

from cropyield.credit import CreditProfile, Policy
from cropyield.errors import CropYieldError


def load_profiles(folder: Path, as_of: str | None) -> list[CreditProfile]:
    """Profiles from ``credit_profiles.json`` (validated), else assessed from estimates."""
    path = folder / "credit_profiles.json"
    if path.exists():
        records = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(records, list):
            raise ValueError(f"{path} must hold a JSON list of credit profiles")
        return [CreditProfile.from_dict(r) for r in records]
    est = folder / "estimates.parquet"
    if not est.exists():
        raise FileNotFoundError(f"neither {path.name} nor {est.name} in {folder}; run "
                                "`cropyield demo --out DIR` first")
    import pandas as pd  # only on this path: the JSON path needs the standard library only

    from cropyield.credit import assess

    table = pd.read_parquet(est)
    if "geometry" in table.columns:
        table = table.drop(columns=["geometry"])
    return assess(table, policy=Policy(), as_of=as_of)


def decide(profiles: list[CreditProfile], *, portfolio_cap: float,
           max_tenor_days: int) -> dict:
    """Bank decisions: the library's suggestion, a tenor rule and a portfolio cap."""
    out, total = [], 0
    for p in sorted(profiles, key=lambda p: p.farmer_id):
        row = {"farmer_id": p.farmer_id, "library_decision": p.decision,
               "suggested_limit_cny": p.suggested_limit_cny, "bank_decision": p.decision,
               "amount_cny": 0, "repayment_end": p.repayment_end,
               "reasons": sorted({r.code for r in p.reasons
                                  if r.effect in ("refer", "decline")})}
        if p.decision == "approve":
            tenor = (dt.date.fromisoformat(p.repayment_end)
                     - dt.date.fromisoformat(p.as_of)).days
            room = max(0, int(portfolio_cap - total))
            step = p.factors.limit_step_cny if p.factors else 1
            amount = min(p.suggested_limit_cny, room - room % step)
            if tenor > max_tenor_days:
                row.update(bank_decision="refer", reasons=["BANK_TENOR_TOO_LONG"])
            elif amount <= 0:
                row.update(bank_decision="refer", reasons=["BANK_PORTFOLIO_CAP"])
            else:
                row.update(amount_cny=amount)
                if amount < p.suggested_limit_cny:
                    row["reasons"] = ["BANK_PORTFOLIO_CAP"]
                total += amount
        out.append(row)
    return {"decisions": out, "portfolio_total_cny": total, "portfolio_cap_cny": portfolio_cap}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path, help="output folder of `cropyield demo --out DIR`")
    ap.add_argument("--portfolio-cap", type=float, default=1_000_000.0, help="CNY")
    ap.add_argument("--max-tenor-days", type=int, default=400)
    ap.add_argument("--as-of", default=None, help="assessment date when reading estimates")
    args = ap.parse_args(argv)
    try:
        profiles = load_profiles(args.folder, args.as_of)
    except (CropYieldError, ValueError, FileNotFoundError) as exc:
        sys.stderr.write(f"risk_service: rejected input: {exc}\n")
        return 2
    result = decide(profiles, portfolio_cap=args.portfolio_cap,
                    max_tenor_days=args.max_tenor_days)
    sys.stdout.write(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
