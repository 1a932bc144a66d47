"""Networks of the Monthly Diffusion model: spectral blocks, seasonality, diffusion, the model.

The public API is ``mdiff.nn.model`` (``MonthlyDiffusion``, ``Conditioning``, ``build_model``).
"""
