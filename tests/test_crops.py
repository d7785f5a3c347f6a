"""Tests of the crop registry data file (data/crops.toml) and its typed access."""

from __future__ import annotations

import pytest

from cropyield.crops import REGIONS, CropCalendar, get_crop, load_registry
from cropyield.errors import ConfigError

IDS = ("winter_wheat summer_maize spring_maize rice_single rice_early rice_late soybean peanut "
       "cotton rapeseed potato sugarcane orchard tea vegetables fallow").split()


def test_all_crop_ids_present_with_names_and_sources():
    reg = load_registry()
    assert set(IDS) <= set(reg)
    for cid in IDS:
        c = reg[cid]
        assert c.id == cid and c.name and c.name_zh and c.source
        assert c.group in ("field", "perennial", "fallow")
        assert "ndvi" in c.index_ranges
        lo, hi = c.index_ranges["ndvi"]
        assert -1 <= lo < hi <= 1


def test_every_region_has_main_crops_and_calendars_parse():
    reg = load_registry()
    for region in REGIONS:
        crops = [c for c in reg.values() if c.calendar(region) is not None]
        assert len(crops) >= 6, region
    for c in reg.values():
        if c.group == "fallow":
            assert not c.calendars
            continue
        assert c.calendars, c.id
        for r, cal in c.calendars.items():
            assert isinstance(cal, CropCalendar) and cal.region == r
            assert cal.source
            assert cal.prior > 0
            assert all(a in reg for a in cal.after)


def test_calendars_match_science_reference():
    """Spot checks against reference/science.md §1.3 (typical seasons)."""
    ww = get_crop("winter_wheat").calendar("north_china_plain")
    assert ww.contains("sow_doy", 285)            # early-mid October
    assert ww.contains("harvest_doy", 152)        # 1 June
    assert 225 <= ww.season_length_days[0] <= 250
    sm = get_crop("summer_maize").calendar("north_china_plain")
    assert sm.contains("sow_doy", 166) and "winter_wheat" in sm.after
    assert sm.contains("harvest_doy", 274)        # 1 October
    sp = get_crop("spring_maize").calendar("northeast")
    assert sp.contains("sow_doy", 125) and sp.contains("harvest_doy", 268)
    late = get_crop("rice_late").calendar("south")
    assert "rice_early" in late.after and late.contains("harvest_doy", 310)
    rape = get_crop("rapeseed").calendar("yangtze")
    assert rape.contains("sow_doy", 280) and rape.contains("harvest_doy", 130)


def test_window_wrapping_over_new_year():
    cal = get_crop("winter_wheat").calendar("north_china_plain")
    assert cal.sos_doy[0] > cal.sos_doy[1]
    assert cal.contains("sos_doy", 320) and cal.contains("sos_doy", 20)
    assert not cal.contains("sos_doy", 200)


def test_overrides_by_dict(tmp_path):
    reg = load_registry({"winter_wheat": {"calendars": {"north_china_plain": {
        "peak_doy": [100, 120], "prior": 2.5}}}})
    cal = reg["winter_wheat"].calendar("north_china_plain")
    assert cal.peak_doy == (100, 120) and cal.prior == 2.5
    assert cal.eos_doy == (138, 166)               # untouched values stay
    # a new crop and a new region for users outside China
    reg2 = load_registry({"crop": {"teff": {
        "name": "teff", "index_ranges": {"ndvi": [0.5, 0.8]},
        "calendars": {"ethiopia_highlands": {
            "sow_doy": [180, 200], "sos_doy": [195, 215], "peak_doy": [240, 260],
            "eos_doy": [280, 300], "harvest_doy": [300, 320], "season_length_days": [90, 130]}}}}})
    assert reg2["teff"].calendar("ethiopia_highlands").sow_doy == (180, 200)
    assert "winter_wheat" in reg2


def test_overrides_by_toml_file(tmp_path):
    p = tmp_path / "mine.toml"
    p.write_text('[crop.peanut.calendars.north_china_plain]\nsow_doy = [120, 140]\n'
                 '[crop.peanut]\nname_zh = "花生(夏)"\n', encoding="utf-8")
    reg = load_registry(p)
    assert reg["peanut"].calendar("north_china_plain").sow_doy == (120, 140)
    assert reg["peanut"].name_zh == "花生(夏)"


def test_unknown_and_invalid_keys_rejected(tmp_path):
    with pytest.raises(ConfigError, match="unknown keys"):
        load_registry({"winter_wheat": {"colour": "gold"}})
    with pytest.raises(ConfigError, match="unknown keys"):
        load_registry({"winter_wheat": {"calendars": {"north_china_plain": {"sow_day": [1, 2]}}}})
    with pytest.raises(ConfigError, match="day-of-year"):
        load_registry({"winter_wheat": {"calendars": {"north_china_plain": {
            "peak_doy": [0, 400]}}}})
    with pytest.raises(ConfigError, match="season_length_days"):
        load_registry({"winter_wheat": {"calendars": {"north_china_plain": {
            "season_length_days": [300, 200]}}}})
    bad = tmp_path / "bad.toml"
    bad.write_text("[crop.winter_wheat\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="cannot read"):
        load_registry(bad)


def test_missing_calendar_fields_rejected():
    with pytest.raises(ConfigError):
        load_registry({"crop": {"x": {"name": "x", "calendars": {"south": {"sow_doy": [1, 5]}}}}})
