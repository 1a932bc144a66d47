"""The evaluation report: AI-MIP metrics, variability modes, SST response, perfect-model scores.

``metrics`` holds the numerics (plain numpy, area-weighted everywhere), ``sources`` reads
rollouts, the reference and the synthetic truth, ``figures`` draws maps and time series,
and ``report`` is the ``mdiff evaluate`` command that ties them together. No torch here:
the report reads files only.
"""
