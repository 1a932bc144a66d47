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
