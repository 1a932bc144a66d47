from mdiff import variables as V


def test_channel_counts_match_the_method():
    assert (V.N_STATE, V.N_FORCING, V.N_STATIC) == (37, 3, 5)
    assert len(set(V.BY_NAME)) == len(V.ALL)


def test_transforms_and_cmip_names():
    assert {c.name for c in V.STATE if c.transform == "sqrt"} == {f"hus{p}" for p in V.PRESSURE_LEVELS_HPA} | {"pr"}
    assert V.channel("siconc").transform == "logit"
    assert V.channel("pr").regrid == "conservative"  # a flux: plain conservative remapping
    cmip = {c.cmip_name for c in V.STATE if c.cmip_name}
    assert cmip == {"ta", "hus", "ua", "va", "zg", "ps", "ts", "tas", "huss", "uas", "vas", "pr", "psl"}


def test_every_channel_has_units_and_era5_source():
    for c in V.ALL:
        assert c.units
        assert c.era5_name or c.name == "sst_undefined"


def test_cmip_variables_and_display_units_come_from_the_table():
    from mdiff.protocol import G0

    zg = V.channel("z500")
    assert (zg.cmip.name, zg.cmip.units, zg.cmip.conversion) == ("zg", "m", "geopotential_to_height")
    assert V.channel("tdas").cmip.also_from == ("ps",) and V.channel("tdas").cmip.name == "huss"
    assert zg.shown == V.Display("m", 1.0 / G0, "zg500")
    assert V.channel("pr").shown == V.Display("mm day-1", 86400.0, "pr")
    assert V.channel("tas").shown == V.Display("K", 1.0, "tas")  # its own units unless converted
    assert V.channel("psl").shown.factor == 0.01 and V.channel("psl").shown.units == "hPa"


def test_derived_names_follow_the_table():
    assert V.PRESSURE_VARIABLES == ("ta", "hus", "ua", "va")
    assert [c.name for c in V.PREPARED_FORCING] == ["sst", "siconc"]  # sst_undefined is derived from sst
    assert set(V.ERA5_GROUPS) == {"pressure", "pressure_500", "single", V.ERA5_INVARIANT}
    dataset, channels, levels = V.ERA5_GROUPS["pressure_500"]
    assert [c.name for c in channels] == ["z500"] and levels == (500,) and dataset == V.ERA5_PRESSURE_LEVELS
    extended = V.derived(V.STATE[:-1], V.FORCING, V.STATIC)  # psl gone: every derived name follows
    assert extended["N_STATE"] == 36 and "psl" not in extended["BY_NAME"]
    assert "psl" not in [c.name for c in extended["ERA5_GROUPS"]["single"][1]]


def test_a_stored_table_reads_back():
    assert V.from_table(V.as_table()) == V.ALL
    record = {**V.as_table()[0], "a_future_field": 1}
    assert V.from_table([record]) == (V.STATE[0],)
