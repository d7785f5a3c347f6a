"""``python -m cropyield.credit schema [PATH]``: print or write the credit JSON Schema."""

from __future__ import annotations

import argparse
import sys

from ._records import schema_text, write_json_schema


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cropyield.credit",
                                     description="cropyield credit records utilities")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sch = sub.add_parser("schema", help="print (or write to PATH) the JSON Schema")
    sch.add_argument("path", nargs="?", help="output file, e.g. docs/credit_schema.json")
    args = parser.parse_args(argv)
    if args.path:
        write_json_schema(args.path)
    else:
        sys.stdout.write(schema_text())
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
