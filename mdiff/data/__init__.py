"""Data: prepared-file contract, synthetic world, ERA5/forcing sources, statistics, dataset."""
