"""The networks: spectral conv, transforms, diffusion pieces, the model API, METHOD.md defects 1-2."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from mdiff import variables as V
from mdiff.config import ConfigError, ModelConfig, load_model_file
from mdiff.grid import LatLonGrid, make_isht, make_sht
from mdiff.nn.diffusion import CosineSchedule, add_noise, cosine_alpha_bar, v_target, x0_from_v
from mdiff.nn.model import (
    Conditioning,
    build_model,
    draw_training_noise,
    held_out_residual,
    parameter_count,
    training_losses,
    weighted_mse,
)
from mdiff.nn.spectral import (
    IsotropicSpectralConv,
    SpectralConv,
    SphereGrid,
    TruncatedISHT,
    TruncatedSHT,
)

GRID = LatLonGrid(17, 32)
TINY = ModelConfig(latent_channels=4, squeeze=2, seasonal_basis=3, hidden_channels=8, encoder_rank=8,
                   decoder_rank=8, denoiser_rank=8, diffusion_steps=4)


def tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(TINY, GRID)
    model.set_statics(torch.randn(V.N_STATIC, *GRID.shape))
    return model


def random_batch(b: int = 2, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shape = GRID.shape
    return {"state": torch.randn(b, V.N_STATE, *shape, generator=g),
            "state_next": torch.randn(b, V.N_STATE, *shape, generator=g),
            "forcing": torch.randn(b, V.N_FORCING, *shape, generator=g),
            "forcing_next": torch.randn(b, V.N_FORCING, *shape, generator=g),
            "month": torch.tensor([3, 12][:b]), "month_next": torch.tensor([4, 1][:b])}


def area() -> torch.Tensor:
    return torch.as_tensor(GRID.area_weights, dtype=torch.float32)


# ----------------------------------------------------------------------------- spectral


def test_truncated_transforms_match_torch_harmonics():
    full = SphereGrid.model(GRID)
    x = torch.randn(2, 3, *GRID.shape, dtype=torch.float64).float()
    reference = make_sht(*GRID.shape, full.lmax, full.lmax)(x)
    ours = TruncatedSHT(full, 5)(x)
    assert torch.allclose(ours, reference[..., :5], atol=1e-5)
    coeffs = reference.clone()
    coeffs[..., 5:] = 0
    back = make_isht(*GRID.shape, full.lmax, full.lmax)(coeffs)
    assert torch.allclose(TruncatedISHT(full, 5)(reference[..., :5]), back, atol=1e-5)


def test_latent_grid_weights_and_shape():
    latent = SphereGrid.latent(LatLonGrid(121, 240), 4)
    assert latent.shape == (30, 60) and latent.lmax == 30
    assert abs(latent.area_weights.sum() - 1) < 1e-12
    with pytest.raises(ValueError, match="squeeze"):
        SphereGrid.latent(GRID, 16)


@pytest.mark.parametrize("out_grid", ["same", "latent"])
def test_spectral_conv_commutes_with_longitudinal_roll(out_grid):
    torch.manual_seed(0)
    grid = LatLonGrid(33, 64)
    full = SphereGrid.model(grid)
    target = full if out_grid == "same" else SphereGrid.latent(grid, 2)
    conv = SpectralConv(3, 4, full, target, rank=6)
    x = torch.randn(2, 3, *grid.shape)
    shift = 8  # 8 of 64 columns: 4 columns on the 32-wide latent grid
    ratio = grid.nlon // target.nlon
    rolled = conv(torch.roll(x, shift, dims=-1))
    expected = torch.roll(conv(x), shift // ratio, dims=-1)
    assert (rolled - expected).abs().max() <= 1e-5 * max(1.0, expected.abs().max())


def test_isotropic_conv_commutes_with_the_equatorial_mirror():
    """One kernel everywhere: mirroring the input north-south mirrors the output (an
    isotropic kernel commutes with every rotation and reflection), which the zonal map,
    free to differ with latitude, does not."""
    torch.manual_seed(0)
    grid = SphereGrid.model(GRID)
    x = torch.randn(2, 3, *GRID.shape)
    iso, zonal = IsotropicSpectralConv(3, 4, grid), SpectralConv(3, 4, grid, grid, 8)
    with torch.no_grad():
        for conv, commutes in ((iso, True), (zonal, False)):
            y, y_mirror = conv(x), conv(x.flip(-2))
            error = float((y_mirror - y.flip(-2)).abs().max() / y.abs().max())
            assert (error < 1e-4) == commutes, (type(conv).__name__, error)
        # a constant field maps to the kernels' degree-0 weights times it
        ones = iso(torch.ones(1, 3, *GRID.shape))
        assert torch.allclose(ones, ones.mean(dim=(-2, -1), keepdim=True), atol=1e-4)


def test_spectral_conv_resamples_and_counts_complex_once():
    conv = SpectralConv(2, 3, SphereGrid.model(GRID), SphereGrid.latent(GRID, 2), rank=5)
    assert conv(torch.randn(1, 2, *GRID.shape)).shape == (1, 3, 8, 16)
    real_numbers = sum(p.numel() for p in conv.parameters())
    assert conv.complex_parameter_count() * 2 == real_numbers


# ----------------------------------------------------------------------------- diffusion


def test_cosine_schedule_and_v_prediction_round_trip():
    abar = cosine_alpha_bar(15)
    assert abar[0] == 1 and (abar[1:] < abar[:-1]).all() and abar[-1] < 1e-2
    schedule = CosineSchedule(15)
    x0, eps = torch.randn(3, 2, 4, 8), torch.randn(3, 2, 4, 8)
    t = torch.tensor([1, 7, 15])
    xt = add_noise(schedule, x0, eps, t)
    assert torch.allclose(x0_from_v(schedule, xt, v_target(schedule, x0, eps, t), t), x0, atol=1e-5)


def test_member_noise_does_not_depend_on_batch():
    model = tiny_model().eval()
    batch = random_batch()
    with torch.no_grad():
        cond = model.conditioning(batch["forcing"][:1], batch["month"][:1])
        mu, _ = model.encode(batch["state"][:1], cond)
        three = model.sample_next(mu.expand(3, -1, -1, -1), cond, [torch.Generator().manual_seed(s) for s in (5, 6, 7)])
        alone = model.sample_next(mu, cond, [torch.Generator().manual_seed(6)])
    assert torch.allclose(three[1:2], alone, atol=1e-5)
    assert not torch.allclose(three[0], three[1])
    with pytest.raises(ValueError, match="one per member"):
        model.sample_next(mu.expand(2, -1, -1, -1), cond, [torch.Generator()])


def test_api_shapes_and_conditioning_broadcast():
    model = tiny_model()
    batch = random_batch()
    cond = model.conditioning(batch["forcing"], batch["month"])
    assert cond.full.shape == (2, model.cond_channels, *GRID.shape)
    assert cond.latent.shape == (2, model.cond_channels, 8, 16)
    mu, logvar = model.encode(batch["state"], cond)
    assert mu.shape == logvar.shape == (2, *model.latent_shape)
    one = model.conditioning(batch["forcing"][:1], batch["month"][:1])
    out = model.decode(mu[:1].expand(4, -1, -1, -1), one)
    assert out.shape == (4, V.N_STATE, *GRID.shape)
    assert torch.allclose(out[0], out[3])
    with pytest.raises(ValueError, match="broadcast"):
        Conditioning.cat([cond, cond]).broadcast(3)


# ----------------------------------------------------------------------------- defects


def test_defect1_denoiser_gets_month_t_plus_1_conditioning(monkeypatch):
    """The published code fed month t's seasonality where t + 1 belongs."""
    model = tiny_model()
    batch = random_batch()
    seen = {}
    original = model.predict_v

    def spy(x_t, t, prior, cond_latent):
        seen["cond"] = cond_latent.detach().clone()
        return original(x_t, t, prior, cond_latent)

    monkeypatch.setattr(model, "predict_v", spy)
    noise = draw_training_noise(model, [torch.Generator().manual_seed(i) for i in range(2)])
    training_losses(model, batch, noise, area())
    with torch.no_grad():
        expected = model.conditioning(batch["forcing_next"], batch["month_next"]).latent
        wrong_month = model.conditioning(batch["forcing_next"], batch["month"]).latent
    assert torch.allclose(seen["cond"], expected)
    season = slice(V.N_FORCING, V.N_FORCING + TINY.seasonal_channels)
    assert not torch.allclose(seen["cond"][:, season], wrong_month[:, season])


def test_defect2_latent_population_parameters_are_saved_and_trained():
    """MD v0.9's learned latent mean/std (latent_standardization: learned) are real parameters."""
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(TINY, latent_standardization="learned"), GRID)
    model.set_statics(torch.randn(V.N_STATIC, *GRID.shape))
    state = model.state_dict()
    assert "latent_mean" in state and "latent_std" in state
    names = {n for n, _ in model.named_parameters()}
    assert {"latent_mean", "latent_std"} <= names
    noise = draw_training_noise(model, [torch.Generator().manual_seed(i) for i in range(2)])
    terms = training_losses(model, random_batch(), noise, area())
    sum(t.mean() for t in terms.values()).backward()
    assert model.latent_mean.grad.abs().sum() > 0 and model.latent_std.grad.abs().sum() > 0
    if torch.cuda.is_available():  # the published bug showed only on GPU
        moved = model.cuda()
        assert isinstance(moved.latent_mean, torch.nn.Parameter)


def test_running_latent_statistics_and_detached_diffusion():
    """latent_standardization: running keeps buffers (saved) that track the encoder means, and
    with grad_to_encoder off the denoising loss leaves the encoder's gradient untouched."""
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(TINY, latent_standardization="running"), GRID)
    model.set_statics(torch.randn(V.N_STATIC, *GRID.shape))
    assert "latent_mean" in model.state_dict() and "latent_mean" not in dict(model.named_parameters())
    noise = draw_training_noise(model, [torch.Generator().manual_seed(i) for i in range(2)])
    before = model.latent_std.clone()
    model.train()
    terms = training_losses(model, random_batch(), noise, area(), grad_to_encoder=False)
    assert not torch.equal(before, model.latent_std)
    terms["diffusion"].mean().backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.encoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.denoiser.parameters())
    model.zero_grad()
    terms = training_losses(model, random_batch(), noise, area(), grad_to_encoder=True)
    terms["diffusion"].mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())


def test_pca_whitening_round_trip_and_white_covariance():
    """latent_standardization pca: the whitened training latents have unit covariance along the
    kept principal directions, and unstandardise inverts standardise exactly."""
    model = tiny_model()
    g = torch.Generator().manual_seed(3)
    shape = model.latent_shape
    mixing = torch.randn(6, int(torch.tensor(shape).prod()), generator=g)
    latents = (torch.randn(200, 6, generator=g) * torch.tensor([9.0, 5, 3, 2, 1, 0.5]) @ mixing).view(200, *shape)
    latents = latents + 0.1 * torch.randn(latents.shape, generator=g)  # full rank, as encoder means are
    model.set_latent_basis(latents + 2.0)
    y = model.standardise(latents + 2.0).flatten(1)
    cov = (y.T @ y) / y.shape[0]
    eofs = model.latent_eofs[:6]
    along = eofs @ cov @ eofs.T
    assert torch.allclose(along, torch.eye(6), atol=2e-2)
    x = torch.randn(3, *shape, generator=g)
    assert torch.allclose(model.unstandardise(model.standardise(x)), x, atol=1e-3)


def test_monthly_whitening_scales_follow_the_season():
    """latent_scales monthly: a mode whose amplitude is 3x larger in January than in July comes
    out of the whitening with about unit variance in both, not 1.6 and 0.2 as pooled scales
    give; unstandardise inverts standardise month by month."""
    model = build_model(dataclasses.replace(TINY, latent_scales="monthly"), GRID)
    g = torch.Generator().manual_seed(4)
    shape = model.latent_shape
    n = 12 * 40
    months = torch.arange(n) % 12 + 1
    amplitude = 2.0 + 1.0 * torch.cos(2 * torch.pi * (months - 1) / 12)  # 3 in January, 1 in July
    pattern = torch.randn(int(torch.tensor(shape).prod()), generator=g)
    pattern /= pattern.norm()
    latents = (torch.randn(n, generator=g) * amplitude)[:, None] * pattern
    latents = (latents + 0.05 * torch.randn(latents.shape, generator=g)).view(n, *shape)
    model.set_latent_basis(latents, months)

    def variance(month: int, by_month: bool) -> float:
        pick = latents[months == month]
        w = model.standardise(pick, torch.full((pick.shape[0],), month) if by_month else None).flatten(1)
        return float((w @ pattern).var())

    assert variance(1, by_month=False) > 1.4 and variance(7, by_month=False) < 0.35
    for month in (1, 4, 7, 10):
        assert 0.6 < variance(month, by_month=True) < 1.5, month
    x = torch.randn(4, *shape, generator=g)
    m = torch.tensor([1, 4, 7, 12])
    torch.testing.assert_close(model.unstandardise(model.standardise(x, m), m), x, atol=1e-3, rtol=1e-3)
    assert not torch.allclose(model.standardise(x, m), model.standardise(x), atol=1e-2)
    # sampling January: the prior (December's latent) is whitened with December's scales, the
    # sample unwhitened with January's, as training pairs them (month, month_next)
    from mdiff.nn.diffusion import ancestral_sample
    from mdiff.rollout import member_generators

    model.set_statics(torch.randn(V.N_STATIC, *GRID.shape, generator=g))
    with torch.inference_mode():
        cond = model.conditioning(torch.randn(1, V.N_FORCING, *GRID.shape, generator=g), torch.tensor([1]))
        prior_latent = latents[:2] * 0.5
        prior = model.standardise(prior_latent, torch.tensor([12]))
        x0 = ancestral_sample(model.schedule, lambda x, t: model.predict_v(x, t, prior, cond.latent.expand(2, -1, -1, -1)),
                              tuple(prior_latent.shape), member_generators(5, [1, 2]), prior_latent.device,
                              model.config.sampler_variance)
        got = model.sample_next(prior_latent, cond, member_generators(5, [1, 2]))
        torch.testing.assert_close(got, model.unstandardise(x0, torch.tensor([1])), rtol=1e-4, atol=1e-4)
        assert not torch.allclose(got, model.unstandardise(x0), rtol=1e-3, atol=1e-3)
    # fewer months than whitened directions (a short training period) keep fewer directions
    model.set_latent_basis(latents[:24], months[:24])
    assert torch.isfinite(model.latent_month_factor).all()
    torch.testing.assert_close(model.unstandardise(model.standardise(x, m), m), x, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("gains, kernel", [("static", "zonal"), ("seasonal", "zonal"), ("seasonal", "isotropic"),
                                           ("seasonal", "both")])
def test_linear_forcing_response_is_linear_in_sst(gains, kernel):
    """The decoder's forcing path: for fixed sea ice (the +dK protocol), twice the SST anomaly
    gives twice the response, with gains fixed in time or following the season and the ice."""
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(TINY, linear_forcing_gains=gains, linear_forcing_kernel=kernel), GRID)
    model.set_statics(torch.randn(V.N_STATIC, *GRID.shape))
    with torch.no_grad():
        for p in model.linear_forcing.parameters():
            p.normal_()
        forcing = torch.randn(1, V.N_FORCING, *GRID.shape)
        forcing[:, 2] = (forcing[:, 2] > 0).float()
        forcing[:, 0] *= 1 - forcing[:, 2]
        month = torch.tensor([5])
        base, doubled = forcing.clone(), forcing.clone()
        base[:, 0] = 0
        doubled[:, 0] *= 2
        r0 = model.conditioning(base, month).response
        r1 = model.conditioning(forcing, month).response - r0
        r2 = model.conditioning(doubled, month).response - r0
        other_month = model.conditioning(forcing, torch.tensor([11])).response - \
            model.conditioning(base, torch.tensor([11])).response
    assert r1.abs().max() > 0
    assert torch.allclose(r2, 2 * r1, atol=1e-4 * float(r1.abs().max()))
    # static gains: the same response in every month; seasonal: it follows the month
    assert torch.allclose(other_month, r1, atol=1e-5) == (gains == "static")


def test_reconstruction_loss_is_area_weighted():
    """METHOD.md defect 8: an error at the pole weighs its (tiny) area, not a full row."""
    from mdiff.nn.model import weighted_mse

    target = torch.zeros(1, 2, *GRID.shape)
    polar, equator = target.clone(), target.clone()
    polar[..., 0, :] = 1.0
    equator[..., GRID.nlat // 2, :] = 1.0
    assert weighted_mse(polar, target, area()) < 0.1 * weighted_mse(equator, target, area())


# ----------------------------------------------------------------------------- size


def test_md15_parameter_count_is_the_reference_size_class():
    model_file = load_model_file("config/model/md15.yaml")
    count = parameter_count(build_model(model_file.model, LatLonGrid(121, 240)))
    assert abs(count - 3.4e6) <= 0.1 * 3.4e6, count
    assert math.isclose(model_file.train.lr, 1e-3) and model_file.model.diffusion_steps == 15


def test_params_command_prints_the_count(capsys):
    from mdiff.cli import main

    assert main(["params", "--model", "config/model/md15.yaml", "--grid", "121x240"]) == 0
    out = capsys.readouterr().out
    assert "3,467,151 parameters" in out and "(3.47 M" in out


def test_per_block_widths_and_latent_truncation():
    """decoder/denoiser widths, the decoder's MLP ratio and latent_lmax reach their blocks."""
    config = dataclasses.replace(TINY, decoder_hidden_channels=6, denoiser_hidden_channels=5,
                                 decoder_mlp_ratio=1.0, latent_lmax=3)
    model = build_model(config, GRID)
    assert model.encoder.spectral.out_channels == TINY.hidden_channels
    assert model.decoder.spectral.out_channels == 6 and model.decoder.mlp.inner.out_channels == 6
    assert model.denoiser.spectral.out_channels == 5 and model.denoiser.mlp.inner.out_channels == 10
    assert model.latent_grid.lmax == 3 and model.denoiser.spectral.mmax == 3
    with pytest.raises(ConfigError, match="decoder_hidden_channels"):
        dataclasses.replace(TINY, decoder_hidden_channels=0)


def test_reconstructing_month_t_plus_1_only(monkeypatch):
    """train.reconstruct: next decodes month t + 1 alone (half the decoding) and its
    reconstruction term is that month's error; both: the mean of the two months' errors."""
    model = tiny_model()
    batch = random_batch()
    noise = draw_training_noise(model, [torch.Generator().manual_seed(i) for i in range(2)])
    decoded = []
    original = model.decode
    monkeypatch.setattr(model, "decode", lambda z, cond: decoded.append(z.shape[0]) or original(z, cond))
    both = training_losses(model, batch, noise, area())
    nxt = training_losses(model, batch, noise, area(), reconstruct_both=False)
    b = batch["state"].shape[0]
    assert decoded == [2 * b, b]
    with torch.no_grad():  # month t + 1 by hand: the same latent draw, its own conditioning
        cond_next = model.conditioning(batch["forcing_next"], batch["month_next"])
        mu, logvar = model.encode(batch["state_next"], cond_next)
        z = mu + (0.5 * logvar).exp() * noise.eps_next
        expected = weighted_mse(original(z, cond_next), batch["state_next"], area())
    assert torch.allclose(nxt["reconstruction"], expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(both["reconstruction"], expected)
    for term in ("diffusion", "kl", "forcing_regression"):  # the other terms do not change
        assert torch.allclose(both[term], nxt[term])


def test_leading_pc_error_weighs_the_whitening_directions():
    """The leading_pcs term is the mean square of the v error's projections on the whitening's
    principal directions: an error along one of them counts fully, one orthogonal to all of
    them not at all (the diffusion term sees both as one direction among C*h*w); without PCA
    whitening it is zero, and it reaches the denoiser's gradient."""
    model = tiny_model()
    g = torch.Generator().manual_seed(5)
    shape = model.latent_shape
    size = int(torch.tensor(shape).prod())
    model.set_latent_basis((torch.randn(300, 4, generator=g) @ torch.randn(4, size, generator=g)
                            + 0.01 * torch.randn(300, size, generator=g)).view(300, *shape))
    eofs = model.latent_eofs
    k = eofs.shape[0]
    along = 3.0 * eofs[1].view(1, *shape)
    ortho = torch.randn(1, size, generator=g)
    ortho = (ortho - (ortho @ eofs.T) @ eofs).view(1, *shape)
    got = model.leading_pc_error(torch.cat([along, ortho]))
    assert torch.allclose(got, torch.tensor([9.0 / k, 0.0]), atol=1e-4)
    assert model.area_mean(along.square()).mean() < got[0] / 2  # diluted in the plain term (k < C*h*w)
    torch.manual_seed(0)
    plain = build_model(dataclasses.replace(TINY, latent_standardization="running"), GRID)
    assert torch.equal(plain.leading_pc_error(torch.cat([along, ortho])), torch.zeros(2))
    batch = random_batch()
    noise = draw_training_noise(model, [torch.Generator().manual_seed(i) for i in range(2)])
    model.zero_grad()
    training_losses(model, batch, noise, area())["leading_pcs"].mean().backward()
    grad = sum(float(p.grad.abs().sum()) for p in model.denoiser.parameters() if p.grad is not None)
    assert grad > 0


def test_held_out_residual_scale_does_not_shrink_with_more_components():
    """model.latent_residual: the scale shared by the directions outside the kept components.
    Fitted in sample it shrinks as the components near the number of months (they fit the
    months' noise); measured on months the components were not fitted to it stays at the
    noise's variance. Latents: a rank-4 signal plus isotropic noise of variance 0.01."""
    g = torch.Generator().manual_seed(7)
    n, d = 200, 400
    x = (torch.randn(n, 4, generator=g) * 3) @ torch.randn(4, d, generator=g) + 0.1 * torch.randn(n, d, generator=g)
    x = (x - x.mean(dim=0)).double()
    _, s, _ = torch.linalg.svd(x, full_matrices=False)
    variance = s.square() / n
    for k in (8, 64, 150):
        in_sample = float(variance[k:].sum() / (d - k))
        held_out = float(held_out_residual(x, k))
        assert held_out == pytest.approx(0.01, rel=0.3), k
        if k == 150:
            assert in_sample < 0.5 * held_out
