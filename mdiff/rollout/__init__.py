"""`mdiff rollout`: ensemble rollout of one experiment and member batch, streamed to NetCDF.

The package by job (as ai2cm/ace keeps stepper, loop and writers apart): ``stepper``
(members' noise streams, month-by-month stepping through the model's public API),
``writer`` (file layout, guard, background writer), ``resume`` (job identity, resume
states, verified restarts), ``command`` (inputs, the loop, `mdiff rollout`, the benchmark).

From the encoded state of ``periods.run_start`` (1978-10) the model steps month by month to
``periods.run_end`` (2024-12): per month, the diffusion sampler draws next month's latent
for every member and the decoder maps it back to the model grid. Design choices:

* **Initial condition**: all members start from the encoder mean ``mu`` of the run_start
  state (no initial perturbation), so members differ only by the diffusion noise (METHOD.md)
  and ``aimip``, ``aimip-p2k``, ``aimip-p4k`` share the same initial state (AIMIP.md). The
  first written month is the decoded initial latent (the model's own view of 1978-10).
* **Members**: member k draws its noise from its own CPU ``torch.Generator`` seeded with
  ``member_seed(rollout.seed, k)``, so member k is the same alone or in a batch of 50, on
  any device (noise is drawn on the CPU, then moved).
* **Forcing** means what it meant in training: ``prepared/forcing.nc`` (monthly means)
  through ``Normalizer.forcing`` with the experiment's SST offset over ocean only.
* **Speed**: members are batched; everything fixed for a month (its conditioning, METHOD.md
  defect 7, and what every diffusion step reuses) is prepared once for all members by
  ``MonthlyDiffusion.prepare_month``; everything runs under ``torch.inference_mode``, and a
  background thread denormalises, checks and writes each month while the next is sampled.
* **Guards**: inputs are checked where they enter (plausible ranges of the variable table,
  SST defined over open ocean: ``mdiff.data.checks``); a NaN/Inf or a value outside its
  channel's plausible range in a decoded month stops the run with an error naming month,
  variable and member; the partial output is then removed.
* **Resume**: the output grows in ``{output}.partial`` and is renamed onto ``{output}``
  only when complete and read back intact (every month against the sha256 recorded when it
  was written). Every ``rollout.resume_every`` months, once everything before is on disk,
  the latent, the generator states, the month index and the sha256 of every month written
  so far go atomically to ``{output}.resume.pt``. A restarted run never appends to the file
  a killed process wrote (HDF5 gives no guarantee for it): it copies the months the resume
  state vouches for into a fresh file, verifying each against its sha256, and continues
  from there; if any month does not verify it starts afresh. Either way its file equals an
  uninterrupted run's.
"""

from .command import (
    RolloutInputError,
    benchmark,
    experiment_forcing,
    initial_state,
    parse_members,
    resolve_device,
    rollout_file,
    run_rollout,
)
from .resume import RolloutIntegrityError, RolloutJob, partial_path, resume_path, verify_output
from .stepper import EnsembleStepper, member_generators, member_seed
from .writer import MonthWriter, RolloutGuardError, check_month, create_output

__all__ = ["EnsembleStepper", "MonthWriter", "RolloutGuardError", "RolloutInputError", "RolloutIntegrityError",
           "RolloutJob", "benchmark", "check_month", "create_output", "experiment_forcing", "initial_state",
           "member_generators", "member_seed", "parse_members", "partial_path", "resolve_device",
           "resume_path", "rollout_file", "run_rollout", "verify_output"]
