import math

import pytest
import torch

from sdlab.diffusion import DiffusionConfig, NoiseSchedule, diffusion_loss, make_betas, nll_bits_per_dim, sample
from sdlab.diffusion.sampling import sampling_timesteps
from sdlab.diffusion.solvers import DDIM, DDPM, ScheduleDenoiser
from sdlab.likelihood import discretized_gaussian_log_likelihood, normal_kl


def test_schedule_endpoints_and_monotonicity():
    linear = make_betas("linear", 1000)
    assert linear[0].item() == pytest.approx(1e-4) and linear[-1].item() == pytest.approx(0.02)
    for kind in ("linear", "cosine"):
        s = NoiseSchedule.create(kind, 1000)
        assert s.alpha_bar.dtype == torch.float32
        assert bool((s.alpha_bar[1:] < s.alpha_bar[:-1]).all())      # strictly decreasing
        assert s.alpha_bar[-1] < 1e-4 and s.alpha_bar[0] > 0.99
        assert s.alpha_bar_prev[0] == 1.0
    sd = NoiseSchedule.create("scaled_linear", 1000, 0.00085, 0.012)    # Stable Diffusion v1's schedule
    assert sd.betas[0].item() == pytest.approx(0.00085) and sd.betas[-1].item() == pytest.approx(0.012)
    assert sd.alpha_bar[-1].item() == pytest.approx(0.0047, abs=1e-4)
    cosine = make_betas("cosine", 1000)
    assert cosine.max().item() <= 0.999 and cosine.min().item() > 0
    assert cosine.dtype == torch.float64


def test_q_sample_mean_and_variance_match_the_closed_form():
    s = NoiseSchedule.create("linear", 1000)
    x0 = torch.tensor([0.8, -0.3, 0.0])
    g = torch.Generator().manual_seed(0)
    for t_value in (0, 10, 500, 999):
        n = 200_000
        t = torch.full((n,), t_value)
        xt = s.q_sample(x0.expand(n, 3), t, torch.randn(n, 3, generator=g))
        ab = s.alpha_bar[t_value]
        assert torch.allclose(xt.mean(0), ab.sqrt() * x0, atol=4 * (1 / math.sqrt(n)))
        assert torch.allclose(xt.var(0), (1 - ab).expand(3), rtol=0.02, atol=1e-5)


def test_single_steps_compose_to_the_closed_form():
    # x_t from t steps of q(x_t | x_{t-1}) = N(sqrt(alpha_t) x_{t-1}, beta_t I) has the same
    # mean and variance as one draw from q(x_t | x_0) (DDPM eq. (4)).
    s = NoiseSchedule.create("cosine", 50)
    n, x0 = 100_000, torch.full((100_000,), 0.7)
    g = torch.Generator().manual_seed(1)
    x = x0.clone()
    for t in range(30):
        x = s.alphas[t].sqrt() * x + s.betas[t].sqrt() * torch.randn(n, generator=g)
    ab = s.alpha_bar[29]
    assert x.mean().item() == pytest.approx((ab.sqrt() * 0.7).item(), abs=0.01)
    assert x.var().item() == pytest.approx((1 - ab).item(), rel=0.02)


def test_posterior_eq7_equals_its_eps_form_and_predict_x0_inverts_q_sample():
    s = NoiseSchedule.create("linear", 100)
    torch.manual_seed(0)
    x0, eps = torch.randn(6, 3, 4, 4), torch.randn(6, 3, 4, 4)
    t = torch.tensor([0, 1, 5, 50, 98, 99])
    xt = s.q_sample(x0, t, eps)
    assert torch.allclose(s.predict_x0(xt, t, eps), x0, atol=1e-3)
    assert torch.allclose(s.predict_eps(xt, t, x0), eps, atol=1e-3)
    mean, var, _ = s.q_posterior(x0, xt, t)
    shape = (-1, 1, 1, 1)
    alpha, beta, ab = (s.alphas[t].reshape(shape), s.betas[t].reshape(shape), s.alpha_bar[t].reshape(shape))
    eps_form = (xt - beta / (1 - ab).sqrt() * eps) / alpha.sqrt()    # DDPM eq. (11) with the true eps
    assert torch.allclose(mean, eps_form, atol=1e-4)
    ab_prev = s.alpha_bar_prev[t].reshape(shape)
    assert torch.allclose(var, (1 - ab_prev) / (1 - ab) * beta, rtol=1e-2, atol=1e-7)
    v = s.v_target(x0, t, eps)
    assert torch.allclose(s.x0_from_v(xt, t, v), x0, atol=1e-4)


def test_training_loss_covers_t_zero_and_validation_noise_is_fixed():
    s = NoiseSchedule.create("linear", 10)
    seen = []
    model = lambda xt, t, labels: (seen.append(t.clone()), torch.zeros_like(xt))[1]
    x0 = torch.rand(4000, 1, 2, 2) * 2 - 1
    out = diffusion_loss(model, s, x0, DiffusionConfig(num_timesteps=10))
    assert set(seen[0].tolist()) == set(range(10))                   # t = 0 is trained too
    assert out["mse"].item() == pytest.approx(1.0, rel=0.03)        # zero predictor vs N(0, I)
    a = diffusion_loss(model, s, x0[:8], DiffusionConfig(num_timesteps=10), generator=torch.Generator().manual_seed(3))
    b = diffusion_loss(model, s, x0[:8], DiffusionConfig(num_timesteps=10), generator=torch.Generator().manual_seed(3))
    assert a["loss"] == b["loss"]


def test_min_snr_weighting_for_eps():
    s = NoiseSchedule.create("linear", 10)
    model = lambda xt, t, labels: torch.zeros_like(xt)
    x0 = torch.zeros(2, 1, 2, 2)
    t = torch.tensor([0, 9])
    g = lambda: torch.Generator().manual_seed(0)
    plain = diffusion_loss(model, s, x0, DiffusionConfig(num_timesteps=10), generator=g(), t=t)
    weighted = diffusion_loss(model, s, x0, DiffusionConfig(num_timesteps=10, min_snr_gamma=5.0), generator=g(), t=t)
    eps = torch.randn(x0.shape, generator=g())
    per_image = eps.pow(2).flatten(1).mean(1)
    snr = s.snr(t)
    expected = (snr.clamp(max=5.0) / snr * per_image).mean()
    assert plain["mse"] == weighted["mse"]
    assert weighted["loss"].item() == pytest.approx(expected.item(), rel=1e-5)


def oracle(schedule, point):
    """The optimal eps-predictor when the data distribution is the single point `point`."""
    def denoiser(xt, t, labels):
        ab = schedule.alpha_bar[t].reshape(-1, 1, 1, 1)
        return (xt - ab.sqrt() * point) / (1 - ab).sqrt()
    return denoiser


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_ddpm_and_ddim_recover_a_one_point_distribution(kind):
    s = NoiseSchedule.create(kind, 50)
    point = torch.tensor([0.5, -0.25, 0.9]).reshape(1, 3, 1, 1).expand(1, 3, 2, 2)
    g = torch.Generator().manual_seed(0)
    for kwargs in (dict(sampler="ddpm"), dict(sampler="ddpm", variance="beta_tilde"),
                   dict(sampler="ddim", sample_steps=10), dict(sampler="ddim", sample_steps=7, eta=1.0, spacing="quadratic"),
                   dict(sampler="euler", sample_steps=10), dict(sampler="euler_a", sample_steps=10),
                   dict(sampler="heun", sample_steps=6), dict(sampler="dpmpp_2m", sample_steps=8)):
        out = sample(oracle(s, point), s, (5, 3, 2, 2), generator=g, clip=False, **kwargs)
        assert torch.allclose(out, point.expand(5, -1, -1, -1), atol=1e-4), kwargs


def test_off_by_one_timesteps_break_the_oracle():
    # The same oracle, evaluated one step late, no longer lands on the point: the sampler test
    # above therefore pins the timestep indexing.
    s = NoiseSchedule.create("linear", 50)
    point = torch.full((1, 1, 2, 2), 0.5)
    shifted = lambda xt, t, labels: oracle(s, point)(xt, (t + 1).clamp(max=49), labels)
    out = sample(shifted, s, (4, 1, 2, 2), "ddpm", generator=torch.Generator().manual_seed(0), clip=False)
    assert not torch.allclose(out, point.expand(4, -1, -1, -1), atol=1e-2)


def test_ddim_with_eta_one_between_neighbouring_steps_is_the_ddpm_step_with_beta_tilde():
    s = NoiseSchedule.create("linear", 100)
    torch.manual_seed(0)
    xt, x0, z = torch.randn(5, 2, 3, 3), torch.randn(5, 2, 3, 3), torch.randn(5, 2, 3, 3)
    net = ScheduleDenoiser(lambda x, t, labels: x0, s, "x0", clip=False)
    for t in (1, 2, 30, 60, 99):
        ddpm, _ = DDPM(variance="beta_tilde").step(net, xt, t, t - 1, lambda like: z)
        ddim, _ = DDIM(eta=1.0).step(net, xt, t, t - 1, lambda like: z)
        assert torch.allclose(ddim, ddpm, atol=1e-4), t
    assert sampling_timesteps(s, 100) == list(range(99, -1, -1))


def test_samples_stay_in_the_data_range_with_clipping():
    s = NoiseSchedule.create("linear", 20)
    wild = lambda xt, t, labels: -5 * xt                             # a terrible denoiser
    for name in ("ddim", "euler", "heun", "dpmpp_2m"):
        out = sample(wild, s, (4, 3, 4, 4), name, sample_steps=5, generator=torch.Generator().manual_seed(0))
        assert out.min() >= -1 and out.max() <= 1, name


def test_discretized_gaussian_sums_to_one_over_the_256_levels():
    levels = torch.arange(256, dtype=torch.float32) / 127.5 - 1
    for mean, log_scale in ((0.1, -3.0), (-0.99, -1.0), (0.5, -6.0)):
        logp = discretized_gaussian_log_likelihood(levels, torch.full_like(levels, mean),
                                                   torch.full_like(levels, log_scale))
        assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-4)
    assert normal_kl(torch.zeros(3), torch.zeros(3), torch.zeros(3), torch.zeros(3)).abs().max() == 0


def test_oracle_bits_per_dim_has_zero_kl_terms_and_the_fixed_variance_decoder_cost():
    s = NoiseSchedule.create("cosine", 100)     # alpha_bar_T ~ 0, so the prior term vanishes
    point = torch.randint(1, 255, (1, 3, 4, 4)).float() / 127.5 - 1   # interior levels only
    x0 = point.expand(2, -1, -1, -1)
    good = nll_bits_per_dim(oracle(s, point), s, x0, generator=torch.Generator().manual_seed(0))
    assert good["terms"].shape == (2, 99)
    assert good["terms"].abs().max() < 1e-4 and good["prior"].max() < 1e-4
    # L_0: the decoder is centred on the true value with sigma^2 = beta_tilde_1, so each pixel
    # costs -log2 P(|N(0, sigma^2)| < 1/255) bits
    sigma = s.posterior_log_variance_clipped[0].mul(0.5).exp().double()
    mass = torch.special.ndtr(1 / 255 / sigma) - torch.special.ndtr(-1 / 255 / sigma)
    assert good["decoder"][0].item() == pytest.approx(-math.log2(mass.item()), rel=1e-3)
    assert good["total"][0].item() == pytest.approx(good["decoder"][0].item(), abs=1e-3)
    zero = nll_bits_per_dim(lambda xt, t, l: torch.zeros_like(xt), s, x0, generator=torch.Generator().manual_seed(0))
    assert zero["total"].min() > good["total"].max() + 1
    strat = nll_bits_per_dim(oracle(s, point), s, x0, timesteps=torch.tensor([5, 50, 95]),
                             generator=torch.Generator().manual_seed(0))
    assert strat["terms"].shape == (2, 3)
