"""The VAE family's math against closed forms (KL, ELBO of a linear-Gaussian model, reparameterised gradients,
discretised likelihoods), vector quantisation (straight-through, EMA, dead codes), and the family's train step,
sampling and checkpoint round trip on the tiny config."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from configs import vae_shapes
from imagen_jax.models import likelihoods, vq
from imagen_jax.models.vae import free_bits_kl, kl_weight, reparameterize
from imagen_jax.training import state as state_lib
from imagen_jax.training import steps
from imagen_jax.training.checkpoint import Checkpointer, abstract_like


def test_gaussian_kl_matches_a_monte_carlo_estimate():
    rng = np.random.default_rng(0)
    mq, mp = rng.normal(size=4), rng.normal(size=4)
    lvq, lvp = rng.normal(scale=0.5, size=4), rng.normal(scale=0.5, size=4)
    exact = np.asarray(likelihoods.gaussian_kl(mq, lvq, mp, lvp))
    samples = mq + np.exp(0.5 * lvq) * rng.normal(size=(400_000, 4))
    log_ratio = np.asarray(
        likelihoods.gaussian_log_density(samples, mq, 0.5 * lvq)
        - likelihoods.gaussian_log_density(samples, mp, 0.5 * lvp)
    )
    stderr = log_ratio.std(0) / math.sqrt(len(samples))
    np.testing.assert_array_less(np.abs(log_ratio.mean(0) - exact), 4 * stderr + 1e-6)
    assert np.all(exact >= 0)
    np.testing.assert_allclose(likelihoods.gaussian_kl(mq, lvq, mq, lvq), 0.0, atol=1e-6)


def test_elbo_of_a_linear_gaussian_model_bounds_the_exact_log_likelihood():
    """p(z) = N(0, I_2), p(x | z) = N(W z + b, s^2 I_3) with orthogonal columns of W, so the exact posterior is a
    diagonal Gaussian. ELBO(q) = E_q log p(x|z) - KL(q || p) (reparameterised Monte Carlo + the analytic KL) equals
    log p(x) at the posterior and log p(x) - KL(q || posterior) elsewhere."""
    w = np.array([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]]) @ np.diag([1.5, 0.7])
    w = np.array([[0.6, 0.8, 0.0], [-0.8, 0.6, 0.0], [0.0, 0.0, 1.0]]) @ w  # rotate: columns stay orthogonal
    b, s = np.array([0.3, -0.2, 0.5]), 0.5
    x = np.array([1.0, -0.7, 0.2])
    exact = stats.multivariate_normal(b, w @ w.T + s**2 * np.eye(3)).logpdf(x)
    post_var = 1.0 / (1.0 + np.diag(w.T @ w) / s**2)
    post_mean = post_var * (w.T @ (x - b)) / s**2

    def elbo(mean, log_var, n=200_000):
        z = reparameterize(
            jnp.broadcast_to(mean, (n, 2)), jnp.broadcast_to(log_var, (n, 2)), jax.random.key(0)
        )
        recon = likelihoods.gaussian_log_density(x, z @ w.T + b, math.log(s)).sum(-1)
        return float(recon.mean() - likelihoods.gaussian_kl(mean, log_var, 0.0, 0.0).sum()), float(
            recon.std() / math.sqrt(n)
        )

    at_posterior, err = elbo(post_mean, np.log(post_var))
    assert abs(at_posterior - exact) < 4 * err + 1e-4
    wrong_mean, wrong_log_var = post_mean + np.array([0.4, -0.3]), np.log(post_var) + np.array([0.5, -0.4])
    gap = float(likelihoods.gaussian_kl(wrong_mean, wrong_log_var, post_mean, np.log(post_var)).sum())
    elsewhere, err = elbo(wrong_mean, wrong_log_var)
    assert gap > 0.1
    assert abs(elsewhere - (exact - gap)) < 4 * err + 1e-4


def test_reparameterised_gradients_match_finite_differences_of_the_exact_expectation():
    """d/d(mean, log_var) of E[z^2 + sin z], z ~ N(mean, exp(log_var)) = mean^2 + v + sin(mean) exp(-v/2)."""
    exact = lambda m, lv: m**2 + np.exp(lv) + np.sin(m) * np.exp(-np.exp(lv) / 2)
    mean, log_var = np.array([0.3, -1.2]), np.array([-0.5, 0.4])

    def estimate(m, lv):
        z = reparameterize(
            jnp.broadcast_to(m, (400_000, 2)), jnp.broadcast_to(lv, (400_000, 2)), jax.random.key(3)
        )
        return jnp.mean(jnp.sum(z**2 + jnp.sin(z), -1))

    grad_m, grad_lv = jax.grad(estimate, argnums=(0, 1))(jnp.asarray(mean), jnp.asarray(log_var))
    h = 1e-5
    fd = lambda i, dm, dl: (
        (exact(mean[i] + dm, log_var[i] + dl) - exact(mean[i] - dm, log_var[i] - dl)) / (2 * h)
    )
    np.testing.assert_allclose(grad_m, [fd(i, h, 0.0) for i in range(2)], atol=2e-2)
    np.testing.assert_allclose(grad_lv, [fd(i, 0.0, h) for i in range(2)], atol=2e-2)


@pytest.mark.parametrize("distribution", ["logistic", "gaussian"])
def test_discretised_likelihood_sums_to_one_and_matches_the_cdf(distribution):
    bins = -1.0 + 2.0 * np.arange(256) / 255.0
    means = np.array([0.0, 0.37, -0.9, 1.4, -2.0, 0.999])
    log_scales = np.array([-6.5, -2.0, 0.0, -1.0, 1.0, -4.0])
    x = np.broadcast_to(bins[:, None], (256, len(means))).astype(np.float32)
    log_p = np.asarray(likelihoods.discretized_log_prob(x, means, log_scales, distribution), np.float64)
    np.testing.assert_allclose(np.exp(log_p).sum(0), 1.0, atol=2e-5)
    dist = stats.logistic if distribution == "logistic" else stats.norm
    scale = np.exp(log_scales)
    upper = np.where(bins[:, None] > 1 - 1e-3, 1.0, dist.cdf(bins[:, None] + 1 / 255, means, scale))
    lower = np.where(bins[:, None] < -1 + 1e-3, 0.0, dist.cdf(bins[:, None] - 1 / 255, means, scale))
    reference = upper - lower
    mask = reference > 1e-6  # float32 against float64: compare where the mass is not vanishing
    np.testing.assert_allclose(np.exp(log_p)[mask], reference[mask], rtol=2e-3, atol=1e-7)


def test_kl_warmup_and_free_bits():
    assert float(kl_weight(jnp.asarray(0), 4)) == 0.25 and float(kl_weight(jnp.asarray(9), 4)) == 1.0
    kl_map = jnp.zeros((2, 3, 3, 2)).at[:, :, :, 0].set(0.1)  # channel 0: 0.9 nats per example, channel 1: 0
    np.testing.assert_allclose(free_bits_kl(kl_map, 0.5), 0.9 + 0.5, rtol=1e-6)


def test_quantize_picks_nearest_codes_and_passes_the_gradient_straight_through():
    rng = np.random.default_rng(0)
    codebook, z_e = jnp.asarray(rng.normal(size=(5, 3))), jnp.asarray(rng.normal(size=(2, 4, 3)))
    z_q, codes, commitment = vq.quantize(z_e, codebook)
    brute = np.argmin(((np.asarray(z_e)[..., None, :] - np.asarray(codebook)) ** 2).sum(-1), -1)
    np.testing.assert_array_equal(codes, brute)
    np.testing.assert_allclose(z_q, np.asarray(codebook)[brute], rtol=1e-6)
    np.testing.assert_allclose(commitment, ((z_e - z_q) ** 2).sum(-1), rtol=1e-5)
    weights = jnp.asarray(rng.normal(size=(2, 4, 3)))
    grad = jax.grad(lambda z: jnp.sum(vq.quantize(z, codebook)[0] * weights))(z_e)
    np.testing.assert_allclose(grad, weights, rtol=1e-6)  # identity Jacobian: straight through
    assert float(jnp.abs(jax.grad(lambda c: jnp.sum(vq.quantize(z_e, c)[0]))(codebook)).sum()) == 0.0


def test_ema_update_moves_codes_towards_their_encodings_and_dead_codes_restart():
    rng = np.random.default_rng(1)
    embedding = jnp.asarray(rng.normal(size=(4, 2)), jnp.float32)
    embedding = embedding.at[3].set(jnp.array([50.0, 50.0]))  # far away: never chosen
    codebook = {"embedding": embedding, "cluster_size": jnp.ones(4), "embed_sum": embedding}
    z_e = jnp.asarray(rng.normal(size=(64, 2)), jnp.float32)
    _, codes, _ = vq.quantize(z_e, embedding)
    updated = vq.ema_codebook_update(codebook, z_e, codes, decay=0.9)
    for k in np.unique(np.asarray(codes)):
        target = np.asarray(z_e)[np.asarray(codes) == k].mean(0)
        before = np.linalg.norm(np.asarray(embedding[k]) - target)
        after = np.linalg.norm(np.asarray(updated["embedding"][k]) - target)
        assert after < before
    np.testing.assert_allclose(
        updated["embedding"][3], embedding[3], rtol=1e-3
    )  # unused: kept (up to smoothing)
    np.testing.assert_allclose(updated["cluster_size"][3], 0.9, rtol=1e-6)
    counts = np.bincount(np.asarray(codes), minlength=4)
    np.testing.assert_allclose(updated["cluster_size"], 0.9 + 0.1 * counts, rtol=1e-5)
    assert 1.0 <= float(vq.perplexity(codes, 4)) <= 3.0

    updated["cluster_size"] = updated["cluster_size"].at[3].set(0.01)
    restarted, count = vq.restart_dead_codes(updated, z_e, threshold=0.05, rng=jax.random.key(0))
    assert float(count) == 1.0
    distance = np.min(np.linalg.norm(np.asarray(z_e) - np.asarray(restarted["embedding"][3]), axis=-1))
    assert distance < 0.1  # on (a jittered copy of) one of the batch's encodings
    assert float(restarted["cluster_size"][3]) == 1.0
    np.testing.assert_array_equal(restarted["embedding"][:3], updated["embedding"][:3])


# The family on the tiny config ---------------------------------------------------------------------------------


def _batch(size: int = 16) -> dict[str, jax.Array]:
    rng = np.random.default_rng(0)
    levels = rng.integers(0, 256, (4, 1, 1, 3))  # flat colours on the 256-level grid the likelihood expects
    return {
        "images": jnp.asarray(np.broadcast_to(levels / 127.5 - 1.0, (4, size, size, 3)), jnp.float32),
        "text_embeddings": jnp.asarray(rng.normal(size=(4, 6, 32)), jnp.float32),
        "text_mask": jnp.asarray(np.arange(6)[None] < np.array([[3], [6], [2], [5]])),
    }


@pytest.fixture(scope="module", params=["", "vq,logistic"])
def trained(request):
    """(family, batch, states before and after each of 2 steps, metrics of the last) for the tiny VAE (Gaussian
    decoder) and VQ-VAE (logistic decoder).
    Init runs eagerly (compiling it costs more than running it); the train step is the one compiled function."""
    config = vae_shapes.get_config(",".join(["tiny", request.param]).strip(","))
    config.data.image_size = 8
    config.model.channel_mult = (1,)  # no resampling, an 8x8 latent grid: fewer kernels to compile
    config.train.warmup_steps = 1
    config.model.dead_code_threshold = 0.5
    family, program = steps.from_config(config)
    batch = _batch(8)
    params = nn.meta.unbox(family.init(jax.random.key(0), batch))
    state = state_lib.create(params, program.optimizer)
    step = jax.jit(program.step)
    states = [state]
    for i in range(2):
        state, metrics = step(state, batch, jax.random.key(10 + i))
        states.append(state)
    return family, batch, states, metrics


def test_train_step_metrics_and_codebook_state(trained):
    family, batch, states, metrics = trained
    assert float(metrics["nonfinite"]) == 0.0 and int(states[-1].step) == 2
    bpd = float(metrics["bits_per_dim"])
    assert np.isfinite(bpd) and 0.0 < float(metrics["nll_bits_per_dim"]) <= bpd + 1e-5  # the rate is >= 0
    if not family.is_vq:
        assert float(metrics["kl"]) >= 0.0
        return
    before, after = states[0].params[vq.CODEBOOK], states[-1].params[vq.CODEBOOK]
    assert 1.0 <= float(metrics["codebook_perplexity"]) <= family.objective.codebook_size
    assert float(jnp.abs(after["embedding"] - before["embedding"]).max()) > 0  # moved by EMA / restarts
    assert float(metrics["dead_codes_restarted"]) >= 0.0
    # the model EMA holds the codebook the EMA update produced (not an average of it)
    for key in ("embedding", "cluster_size", "embed_sum"):
        np.testing.assert_allclose(states[-1].ema_params[vq.CODEBOOK][key], after[key], rtol=1e-6)


def test_generate_and_reconstruct_give_images_in_range(trained):
    family, batch, states, _ = trained
    params = states[-1].ema_params
    images = family.generate(params, batch["text_embeddings"], batch["text_mask"], jax.random.key(0))
    assert images.shape == batch["images"].shape
    assert float(jnp.abs(images).max()) <= 1.0 and bool(jnp.all(jnp.isfinite(images)))
    recon, bpd = family.reconstruct(params, batch, jax.random.key(1))
    assert recon.shape == batch["images"].shape and bpd.shape == (4,) and bool(jnp.all(bpd > 0))
    with pytest.raises(ValueError, match="temperature"):
        family.generate(params, batch["text_embeddings"], batch["text_mask"], jax.random.key(0), steps=3)


def test_save_and_restore_round_trip(trained, tmp_path):
    family, _, states, _ = trained
    if not family.is_vq:
        pytest.skip("the VQ-VAE's state (with its EMA codebook) covers the VAE's")
    state = states[-1]
    checkpointer = Checkpointer(str(tmp_path / "checkpoints"), keep=1)
    checkpointer.save(2, state, {"data": {"next_step": 2}})
    checkpointer.wait()
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state)
    restored, record = checkpointer.restore(
        2, abstract_like(shapes, jax.tree.map(lambda _: sharding, shapes))
    )
    checkpointer.close()
    assert record["data"]["next_step"] == 2
    jax.tree.map(np.testing.assert_array_equal, restored, state)
