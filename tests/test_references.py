"""Every citation key in the packaged data resolves in docs/references.md; no developer notes
(or references to files outside the repository) reach the ``source`` strings of output tables."""

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "src" / "cropyield" / "data"
REFS = ROOT / "docs" / "references.md"


def _sources(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == "source" and isinstance(v, str):
                yield v
            else:
                yield from _sources(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _sources(v)


@pytest.mark.parametrize("name", ["crops.toml", "crop_yield.toml", "prices.toml"])
def test_data_sources_cite_documented_keys(name):
    defined = set(re.findall(r"\*\*\[([^\]]+)\]\*\*", REFS.read_text(encoding="utf-8")))
    sources = list(_sources(tomllib.loads((DATA / name).read_text(encoding="utf-8"))))
    assert sources
    for s in sources:
        assert "science.md" not in s and not re.search(r"\bverify\b|unverified", s, re.I), s
        for key in re.findall(r"\[([^\]]+)\]", s):
            for k in key.split(";"):
                assert k.strip() in defined, f"{name}: [{k.strip()}] is not in docs/references.md"


def test_no_science_md_in_packaged_data_or_radiation():
    from cropyield.radiation import SUNSHINE_CLIMATOLOGY

    for f in DATA.glob("*.toml"):
        assert "science.md" not in f.read_text(encoding="utf-8"), f.name
    for region, rec in SUNSHINE_CLIMATOLOGY.items():
        assert "science.md" not in rec["source"] and "verify" not in rec["source"], region
