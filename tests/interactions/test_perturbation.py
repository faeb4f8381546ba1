"""E_ij[I_ij(δ)] inside a perturbation (IR loss): exactness, reference form, gradients, errors."""

from __future__ import annotations

import pytest
import torch

from lit_advgame.interactions import (
    PerturbationGame,
    exact_interactions,
    grid_player_map,
    perturbation_interaction,
    perturbation_interaction_estimate,
    sample_groups_with_replacement,
)
from tests.interactions.helpers import make_images, make_tiny_cnn

Y = torch.tensor([1, 3])


def _delta(x, seed=0, scale=0.2):
    """A random perturbation clipped to the image box (x + delta in [0, 1], as the games require)."""
    delta = scale * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype)
    return (x + delta).clamp(0, 1) - x


@pytest.mark.parametrize("value", ["margin_fixed", "margin_max"])
def test_single_form_with_all_players_is_the_exact_average_interaction(value):
    model = make_tiny_cnn()
    x = make_images()
    delta = _delta(x)
    exact = exact_interactions(PerturbationGame(model, x, delta, Y, grid=3, value=value))
    iu = torch.triu_indices(9, 9, offset=1)
    mean_sii = exact.shapley_interaction[:, iu[0], iu[1]].mean(1)  # brute-force E_ij of the Shapley interaction
    paper = perturbation_interaction(
        model, x, delta, Y, grid=3, form="single", num_samples=9, value=value, scale="paper"
    )
    assert torch.allclose(paper.double(), mean_sii, atol=1e-12, rtol=0)
    reference = perturbation_interaction(model, x, delta, Y, grid=3, form="single", num_samples=100, value=value)
    assert torch.allclose(reference, paper * 8, atol=1e-12)  # scale="reference" drops 1/(n-1)
    estimate = perturbation_interaction_estimate(
        model, x, delta, Y, grid=3, form="single", num_samples=9, value=value, scale="paper"
    )
    assert torch.allclose(estimate.per_image, mean_sii, atol=1e-12) and torch.equal(
        estimate.per_image_stderr, torch.zeros(2, dtype=torch.float64)
    )
    assert estimate.num_forward_passes == 2 * (2 * 9 + 2)


def test_single_form_with_sampled_players_converges():
    model = make_tiny_cnn()
    x = make_images(height=8, width=8)
    delta = _delta(x, seed=1)
    exact = perturbation_interaction_estimate(model, x, delta, Y, grid=4, form="single", num_samples=16, scale="paper")

    def runs(k):
        results = [
            perturbation_interaction_estimate(
                model,
                x,
                delta,
                Y,
                grid=4,
                form="single",
                num_samples=k,
                scale="paper",
                generator=torch.Generator().manual_seed(seed),
            )
            for seed in range(20)
        ]
        errors = torch.stack([r.per_image for r in results]) - exact.per_image
        stderr = torch.stack([r.per_image_stderr for r in results])
        return errors, stderr

    errors, stderr = runs(8)
    z = errors.abs() / stderr
    assert (z <= 2).double().mean() >= 0.8 and z.max() < 6  # calibrated standard errors (t-like with 7 dof)
    small_errors, _ = runs(3)
    assert errors.abs().mean() < 0.8 * small_errors.abs().mean()  # the error shrinks with more players


def test_coalition_form_matches_the_reference_computation():
    model = make_tiny_cnn()
    x = make_images()
    delta = _delta(x, seed=2)
    result = perturbation_interaction(
        model, x, delta, Y, grid=3, num_samples=5, group_size=3, generator=torch.Generator().manual_seed(7)
    )
    groups = sample_groups_with_replacement(2, 5, 3, 9, torch.Generator().manual_seed(7))
    pm = grid_player_map(9, 9, 3)
    with torch.no_grad():
        logits_full = model(x + delta)
        other = logits_full.clone()
        other[torch.arange(2), Y] = float("-inf")
        runner_up = other.argmax(1)  # fixed from the full perturbation, as the reference code

        def v(inputs, b):
            z = model(inputs)
            return z[:, runner_up[b]] - z[:, Y[b]]

        for b in range(2):
            terms = []
            for k in range(5):
                mask = groups[b, k][pm].to(x.dtype)
                v_full = v((x + delta)[b : b + 1], b)
                v_without = v((x + delta * (1 - mask))[b : b + 1], b)
                v_only = v((x + delta * mask)[b : b + 1], b)
                v_empty = v(x[b : b + 1], b)
                terms.append(v_full - v_without - v_only + v_empty)
            assert torch.allclose(result[b], torch.cat(terms).mean(), atol=1e-12)
    estimate = perturbation_interaction_estimate(
        model, x, delta, Y, grid=3, num_samples=5, group_size=3, generator=torch.Generator().manual_seed(7)
    )
    assert torch.allclose(estimate.per_image, result, atol=1e-12) and bool((estimate.per_image_stderr > 0).all())
    assert estimate.num_forward_passes == 2 * (2 * 5 + 2)
    d = estimate.to_dict()
    assert set(d) == {
        "perturbation_interaction",
        "perturbation_interaction_stderr",
        "perturbation_interaction/num_forward_passes",
    }


def test_coalition_form_converges_to_its_expectation():
    # E over groups of 2 cells drawn with replacement, enumerated exactly (9 x 9 ordered draws)
    model = make_tiny_cnn()
    x = make_images()
    delta = _delta(x, seed=6)
    game = PerturbationGame(model, x, delta, Y, grid=3)
    draws = torch.cartesian_prod(torch.arange(9), torch.arange(9))
    groups = torch.zeros(81, 9, dtype=torch.bool)
    groups[torch.arange(81), draws[:, 0]] = True
    groups[torch.arange(81), draws[:, 1]] = True
    full, empty = torch.ones(1, 9, dtype=torch.bool), torch.zeros(1, 9, dtype=torch.bool)
    values = game.evaluate(torch.cat([full, empty, ~groups, groups]))
    expected = (values[:, :1] + values[:, 1:2] - values[:, 2:83] - values[:, 83:]).mean(1)
    estimate = perturbation_interaction_estimate(
        model, x, delta, Y, grid=3, num_samples=1200, group_size=2, generator=torch.Generator().manual_seed(3)
    )
    assert bool(((estimate.per_image - expected).abs() <= 4 * estimate.per_image_stderr).all())
    assert bool((estimate.per_image_stderr < 0.1 * expected.abs().max()).all())


def test_gradients_flow_and_match_finite_differences():
    model = make_tiny_cnn(smooth=True)
    x = make_images(batch=1, height=4, width=4)
    delta = _delta(x, seed=3, scale=0.1).requires_grad_(True)
    y = Y[:1]

    def fn(d):
        return perturbation_interaction(
            model,
            x,
            d,
            y,
            grid=2,
            num_samples=3,
            group_size=2,
            value="margin_max",
            generator=torch.Generator().manual_seed(0),
        )

    out = fn(delta)
    assert out.shape == (1,) and out.requires_grad
    (grad,) = torch.autograd.grad(out.sum(), delta)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert torch.autograd.gradcheck(fn, (delta,), eps=1e-6, atol=1e-6, fast_mode=True)
    with torch.no_grad():
        assert not fn(delta).requires_grad
    assert not fn(delta.detach()).requires_grad


def test_margin_fixed_gradient_keeps_the_runner_up_fixed():
    model = make_tiny_cnn(smooth=True)
    x = make_images(batch=1, height=6, width=6)
    delta = _delta(x, seed=4, scale=0.1).requires_grad_(True)
    y = Y[:1]
    out = perturbation_interaction(model, x, delta, y, grid=2, form="single", num_samples=4, scale="paper")
    (grad,) = torch.autograd.grad(out.sum(), delta)
    with torch.no_grad():
        logits = model(x + delta)
        logits[0, y] = float("-inf")
        t = int(logits.argmax())
    game = PerturbationGame(model, x, delta, y, grid=2, value="target_minus_true", target=torch.tensor([t]))
    exact = exact_interactions(game)
    manual = delta.detach().clone().requires_grad_(True)

    def value(d, coalition_mask):
        z = model(x + d * coalition_mask)
        return z[0, t] - z[0, y[0]]

    pm = grid_player_map(6, 6, 2).to(x.dtype)
    total = 0.0
    for i in range(4):
        only = (pm == i).to(x.dtype)
        total = total + value(manual, 1.0) - value(manual, 1 - only) - value(manual, only) + value(manual, 0.0)
    total = total / 4 / 3
    assert torch.allclose(total.detach(), exact.average_interaction.squeeze(), atol=1e-12)
    assert torch.allclose(out.detach(), total.detach(), atol=1e-12)
    (manual_grad,) = torch.autograd.grad(total, manual)
    assert torch.allclose(grad, manual_grad, atol=1e-10)


def test_modes_restored_and_seeds_reproduce():
    model = make_tiny_cnn()
    model.train()
    x = make_images()
    delta = _delta(x, seed=5)
    a = perturbation_interaction(
        model, x, delta, Y, grid=3, generator=torch.Generator().manual_seed(1), num_samples=4, group_size=3
    )
    b = perturbation_interaction(
        model, x, delta, Y, grid=3, generator=torch.Generator().manual_seed(1), num_samples=4, group_size=3
    )
    c = perturbation_interaction(
        model, x, delta, Y, grid=3, generator=torch.Generator().manual_seed(2), num_samples=4, group_size=3
    )
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert all(m.training for m in model.modules())


def test_perturbation_errors():
    model = make_tiny_cnn()
    x = make_images()
    delta = _delta(x)
    with pytest.raises(ValueError, match="unknown form"):
        perturbation_interaction(model, x, delta, Y, grid=3, form="pairs")
    with pytest.raises(ValueError, match="unknown scale"):
        perturbation_interaction(model, x, delta, Y, grid=3, scale="none")
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        perturbation_interaction(model, x, delta, Y, grid=3, num_samples=0)
    with pytest.raises(ValueError, match="shape of x"):
        perturbation_interaction(model, x, delta[:1], Y, grid=3)
    with pytest.raises(ValueError, match="larger than the image"):
        perturbation_interaction(model, x, delta, Y, grid=16)
    with pytest.raises(ValueError, match="y"):
        perturbation_interaction(model, x, delta, None, grid=3)
    with pytest.raises(ValueError, match="y must be a 1-D tensor of 2"):
        perturbation_interaction(model, x, delta, Y[:1], grid=3)


def _all_graph(model, x, delta, y, **options):
    """The all-graph path: every chunk's graph kept until one backward."""
    from lit_advgame.interactions.perturbation import _game_and_approximator

    game, approximator = _game_and_approximator(model, x, delta, y, dict(options), "perturbation_interaction")
    return approximator.terms(game)[0].mean(dim=1)


@pytest.mark.parametrize("batch_size", [1, 3, 7, 256])
@pytest.mark.parametrize(
    "options",
    [
        dict(form="coalition", num_samples=5, group_size=3),
        dict(form="single", num_samples=4, scale="paper", value="margin_max"),
        dict(form="single", num_samples=100, value="log_prob"),
    ],
)
def test_chunked_backward_equals_the_all_graph_gradient(batch_size, options):
    """Values bit for bit; ∂/∂δ to float tolerance, for chunks inside one image and spanning several."""
    model = make_tiny_cnn()
    x = make_images(height=6, width=6)
    delta = _delta(x, seed=2).requires_grad_(True)
    weights = torch.tensor([0.7, -1.3])  # any upstream gradient per image
    outputs, grads = [], []
    for fn in (perturbation_interaction, _all_graph):
        out = fn(
            model, x, delta, Y, grid=3, batch_size=batch_size, generator=torch.Generator().manual_seed(5), **options
        )
        outputs.append(out.detach())
        grads.append(torch.autograd.grad((weights * out).sum(), delta)[0])
    assert torch.equal(outputs[0], outputs[1])
    assert grads[1].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("value", ["margin_fixed", "margin_max"])
def test_given_full_logits_save_a_forward_and_carry_the_full_coalition_gradient(value):
    model = make_tiny_cnn()
    x = make_images(height=6, width=6)
    delta = _delta(x, seed=4).requires_grad_(True)
    options = dict(grid=3, num_samples=4, group_size=2, value=value)
    own = perturbation_interaction(model, x, delta, Y, generator=torch.Generator().manual_seed(1), **options)
    logits = model(x + delta)
    shared = perturbation_interaction(
        model, x, delta, Y, generator=torch.Generator().manual_seed(1), full_logits=logits, **options
    )
    assert torch.equal(own, shared)
    (g_own,) = torch.autograd.grad(own.sum(), delta)
    (g_shared,) = torch.autograd.grad(shared.sum(), delta)
    torch.testing.assert_close(g_shared, g_own, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="full_logits"):
        perturbation_interaction(model, x, delta, Y, full_logits=logits[:1], **options)
    with pytest.raises(TypeError, match="full_logits"):
        perturbation_interaction(model, x, delta, Y, full_logits=[0.0, 1.0], **options)
