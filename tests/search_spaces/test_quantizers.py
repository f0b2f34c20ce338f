"""Fake quantizers: the integer form, the export contract (forward == dequantize(quantize)), the
straight-through gradients, and N2UQ's activation quantizer."""

from __future__ import annotations

import pytest
import torch

from search_spaces.methods.quantizers import ActivationQuantizer, WeightQuantizer

WEIGHT_BITS = [1, 2, 3, 4, 8, 16]
ACT_BITS = [2, 3, 4, 8]


def _weight(seed: int = 0, shape: tuple[int, ...] = (8, 4, 3, 3)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 0.05


def _relative_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    return float((approx - exact).norm() / exact.norm())


# --- weights -------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", WEIGHT_BITS)
def test_integer_form_round_trip(bits):
    w = _weight(bits)
    quantizer = WeightQuantizer(w, bits)
    q, scale = quantizer.quantize(w)
    assert q.dtype == torch.int64 and q.shape == w.shape
    assert int(q.min()) >= 0 and int(q.max()) <= 2**bits - 1
    assert scale.dtype == torch.float32 and scale.shape == (w.shape[0],)
    assert bool((scale > 0).all())
    restored = WeightQuantizer.dequantize(q, scale, bits)
    assert restored.dtype == torch.float32 and restored.shape == w.shape
    if bits > 1:
        # Inside the clip range every weight lands on its nearest level: within half a step.
        half_step = (scale / (2**bits - 1)).reshape(-1, 1, 1, 1)
        inside = w.abs() <= scale.reshape(-1, 1, 1, 1)
        assert bool(((restored - w).abs() <= half_step * 1.0001)[inside].all())


@pytest.mark.parametrize("bits", WEIGHT_BITS)
def test_levels_are_uniform_symmetric_and_all_reachable(bits):
    levels = 2**bits
    codes = torch.arange(levels).reshape(1, -1)
    values = WeightQuantizer.dequantize(codes, torch.tensor([1.0]), bits)[0]
    assert values.unique().numel() == levels
    assert values[0] == -1.0 and values[-1] == 1.0
    assert torch.allclose(values, -values.flip(0), atol=1e-6)
    assert torch.allclose(values.diff(), torch.full((levels - 1,), 2 / (levels - 1)), atol=1e-6)


@pytest.mark.parametrize("bits", WEIGHT_BITS)
def test_forward_is_bitwise_dequantize_of_quantize(bits):
    """The exporter's contract: an exported and reloaded layer computes the same weight."""
    w = _weight(10 + bits, (16, 8, 3, 3))
    quantizer = WeightQuantizer(w, bits).eval()
    expected = WeightQuantizer.dequantize(*quantizer.quantize(w), bits)
    with torch.no_grad():
        assert torch.equal(quantizer(w), expected)
    # With gradients on, the value is the same tensor plus an exact zero.
    latent = w.clone().requires_grad_()
    assert torch.equal(quantizer.train()(latent).detach(), expected)


def test_forward_handles_linear_weights_and_zero_channels():
    w = _weight(3, (6, 10))
    w[2] = 0.0  # a channel pruned to zero must not divide by zero
    for bits in (1, 4):
        quantizer = WeightQuantizer(w, bits)
        with torch.no_grad():
            out = quantizer(w)
        assert bool(torch.isfinite(out).all())
        assert torch.equal(out, WeightQuantizer.dequantize(*quantizer.quantize(w), bits))
        assert float(out[2].abs().max()) < 1e-9


def test_one_bit_is_adambnn_sign_times_mean_abs():
    w = _weight(4)
    quantizer = WeightQuantizer(w, 1)
    assert list(quantizer.parameters()) == []  # alpha is a fixed buffer of ones
    assert torch.equal(quantizer.alpha, torch.ones(w.shape[0]))
    with torch.no_grad():
        out = quantizer(w)
    mean_abs = w.abs().mean(dim=(1, 2, 3), keepdim=True)
    assert torch.equal(out.sign(), w.sign())
    assert torch.allclose(out, w.sign() * mean_abs, rtol=1e-6, atol=0)


def test_error_falls_as_bits_rise():
    w = _weight(5, (32, 16, 3, 3))
    errors = []
    for bits in WEIGHT_BITS:
        with torch.no_grad():
            errors.append(_relative_error(WeightQuantizer(w, bits)(w), w))
    assert errors == sorted(errors, reverse=True)
    assert len(set(errors)) == len(errors)
    assert errors[WEIGHT_BITS.index(8)] < 0.01


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_alpha_initialisation_beats_fixed_clips(bits):
    """The grid-searched alpha is no worse than no clipping or N2UQ's fixed initial clip."""
    w = _weight(6, (16, 32, 3, 3))
    quantizer = WeightQuantizer(w, bits)
    levels = 2**bits
    mean_abs = w.abs().mean(dim=(1, 2, 3))
    candidates = {
        "grid": quantizer.alpha.detach().clone(),
        "no clipping": w.abs().amax(dim=(1, 2, 3)) / mean_abs,
        "N2UQ": torch.full_like(mean_abs, 2 * (levels - 1) / levels),
    }
    errors = {}
    for name, alpha in candidates.items():
        with torch.no_grad():
            quantizer.alpha.copy_(alpha)
            errors[name] = float((quantizer(w) - w).square().sum())
    assert errors["grid"] <= errors["no clipping"] * 1.0001
    assert errors["grid"] <= errors["N2UQ"] * 1.0001


@pytest.mark.parametrize("bits", [2, 3, 4, 8, 16])
def test_gradients_identity_inside_clip_range(bits):
    w = _weight(7)
    quantizer = WeightQuantizer(w, bits)
    with torch.no_grad():
        quantizer.alpha.mul_(0.5)  # make sure some weights are clipped
    latent = w.clone().requires_grad_()
    quantizer(latent).sum().backward()
    _, scale = quantizer.quantize(w)
    inside = w.abs() <= scale.reshape(-1, 1, 1, 1)
    assert bool(inside.any()) and bool((~inside).any())
    assert torch.allclose(latent.grad[inside], torch.ones(()), atol=1e-5)
    assert bool((latent.grad[~inside] == 0).all())
    assert quantizer.alpha.grad is not None and bool((quantizer.alpha.grad != 0).all())


def test_one_bit_gradient_is_clipped_at_one():
    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(8)) * 1.5
    quantizer = WeightQuantizer(w, 1)
    latent = w.clone().requires_grad_()
    quantizer(latent).sum().backward()
    assert bool((w.abs() > 1).any())
    assert torch.equal(latent.grad, (w.abs() <= 1).float())


@pytest.mark.parametrize("factor", [0.3, 3.0])
def test_alpha_learns(factor):
    """A few Adam steps on a reconstruction loss pull a badly set alpha back, from either side."""
    w = _weight(9, (16, 64))
    quantizer = WeightQuantizer(w, 2)
    with torch.no_grad():
        quantizer.alpha.mul_(factor)
    optimizer = torch.optim.Adam(quantizer.parameters(), lr=0.1)
    losses = []
    for _ in range(30):
        loss = (quantizer(w) - w).square().sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("bits", [0, 5, 32])
def test_unsupported_weight_bits_are_refused(bits):
    with pytest.raises(ValueError, match="weight bits must be one of"):
        WeightQuantizer(_weight(), bits)


# --- activations ---------------------------------------------------------------------------------


def _activations(kind: str, n: int = 100_000, seed: int = 0) -> torch.Tensor:
    x = torch.randn(n, generator=torch.Generator().manual_seed(seed))
    if kind == "relu":
        return torch.relu(x)
    if kind == "uniform":
        return torch.rand(n, generator=torch.Generator().manual_seed(seed)) * 4 - 1
    return x * 2 + 0.5


def _scrambled(bits: int, seed: int = 0) -> ActivationQuantizer:
    """A quantizer with random nonuniform intervals, some below the length floor."""
    quantizer = ActivationQuantizer(bits)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        quantizer.start.fill_(-1.0)
        quantizer.lengths.copy_(torch.rand(2**bits - 1, generator=generator) * 0.3 - 0.01)
        quantizer.out_start.fill_(-0.5)
        quantizer.out_step.fill_(0.1)
    return quantizer


@pytest.mark.parametrize("bits", ACT_BITS)
def test_activation_outputs_are_uniform_levels(bits):
    quantizer = _scrambled(bits)
    x = torch.linspace(-3, 60, 50_000)
    with torch.no_grad():
        y = quantizer(x)
    values = y.unique()
    assert values.numel() <= 2**bits
    assert torch.isin(values, quantizer.levels()).all()
    assert torch.allclose(values.diff(), torch.tensor(0.1), rtol=1e-4)


@pytest.mark.parametrize("bits", ACT_BITS)
def test_activation_thresholds_sorted_and_output_monotone(bits):
    quantizer = _scrambled(bits, seed=bits)
    thresholds = quantizer.thresholds()
    assert thresholds.shape == (2**bits - 1,)
    assert bool((thresholds.diff() >= 0).all())
    x = torch.sort(torch.randn(20_000) * 20).values
    with torch.no_grad():
        y = quantizer(x)
    assert bool((y.diff() >= 0).all())
    # Thresholds sit at interval midpoints, and the output counts those strictly below the input
    # (N2UQ: x passes t when x > t), the thresholds themselves included.
    lengths = torch.maximum(quantizer.lengths, quantizer.min_length).detach()
    assert torch.allclose(thresholds[0], quantizer.start.detach() + lengths[0] / 2)
    probes = torch.cat([thresholds, thresholds + 1e-4, torch.randn(1000) * 20])
    counts = (probes[:, None] > thresholds[None, :]).sum(dim=1).float()
    with torch.no_grad():
        expected = quantizer.out_start + quantizer.out_step * counts
        assert torch.equal(quantizer(probes), expected)


@pytest.mark.parametrize("kind", ["relu", "uniform"])
def test_init_from_gives_small_error_at_8_bits(kind):
    x = _activations(kind)
    quantizer = ActivationQuantizer(8)
    quantizer.init_from(x)
    with torch.no_grad():
        assert _relative_error(quantizer(x), x) < 0.01


@pytest.mark.parametrize("kind", ["relu", "uniform", "signed"])
def test_init_from_error_falls_with_bits(kind):
    x = _activations(kind, seed=1)
    errors = []
    for bits in ACT_BITS:
        quantizer = ActivationQuantizer(bits)
        quantizer.init_from(x)
        with torch.no_grad():
            errors.append(_relative_error(quantizer(x), x))
    assert errors == sorted(errors, reverse=True)
    assert 0.05 < errors[0] < 0.4  # 2 bits: moderate


def test_init_from_keeps_relu_zeros_exact():
    x = _activations("relu").reshape(10, 10, 1000)
    quantizer = ActivationQuantizer(2)
    quantizer.init_from(x)
    assert quantizer.start.item() == 0.0
    with torch.no_grad():
        y = quantizer(x)
    assert bool((y[x == 0] == 0).all())


def test_init_from_constant_and_empty_batches():
    quantizer = ActivationQuantizer(4)
    quantizer.init_from(torch.full((100,), 3.0))
    with torch.no_grad():
        assert torch.allclose(quantizer(torch.full((5,), 3.0)), torch.tensor(3.0))
    with pytest.raises(ValueError, match="non-empty"):
        quantizer.init_from(torch.empty(0))


@pytest.mark.parametrize("bits", ACT_BITS)
def test_activation_gradients_reach_input_lengths_and_start(bits):
    quantizer = ActivationQuantizer(bits)
    x = _activations("signed", n=4096)
    quantizer.init_from(x)
    inputs = x.clone().requires_grad_()
    weights = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    (quantizer(inputs) * weights).sum().backward()
    for name, grad in [
        ("input", inputs.grad),
        ("lengths", quantizer.lengths.grad),
        ("start", quantizer.start.grad),
        ("out_start", quantizer.out_start.grad),
        ("out_step", quantizer.out_step.grad),
    ]:
        assert grad is not None and bool(grad.abs().sum() > 0), name
    # The surrogate's slope is out_step / a_i inside the intervals (1 after init_from), 0 outside.
    lo, hi = quantizer.start.item(), (quantizer.start + quantizer.lengths.sum()).item()
    inside, outside = (x > lo) & (x < hi), (x < lo) | (x > hi)
    assert torch.allclose(inputs.grad[inside], weights[inside], rtol=1e-3)
    assert bool((inputs.grad[outside] == 0).all())


@pytest.mark.parametrize("bits", ACT_BITS)
def test_activation_forward_survives_a_state_dict_round_trip(bits):
    quantizer = _scrambled(bits)
    x = torch.randn(3, 8, 5, 5) * 3
    with torch.no_grad():
        expected = quantizer.eval()(x)
    reloaded = ActivationQuantizer(bits)
    reloaded.load_state_dict(quantizer.state_dict())
    with torch.no_grad():
        assert torch.equal(reloaded.eval()(x), expected)
    # The training forward has the same value: the surrogate adds an exact zero.
    assert torch.equal(quantizer.train()(x.clone().requires_grad_()).detach(), expected)


def test_activation_parameters_learn():
    """From N2UQ's default layout (outputs 0…2) on data around 1 with spread 3, Adam fits the
    thresholds and levels: the reconstruction loss falls and the intervals move."""
    x = torch.randn(4096, generator=torch.Generator().manual_seed(3)) * 3 + 1
    quantizer = ActivationQuantizer(2)
    start, lengths = quantizer.start.item(), quantizer.lengths.detach().clone()
    optimizer = torch.optim.Adam(quantizer.parameters(), lr=0.05)
    losses = []
    for _ in range(60):
        loss = (quantizer(x) - x).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert quantizer.start.item() != start
    assert not torch.allclose(quantizer.lengths.detach(), lengths)


@pytest.mark.parametrize("bits", [1, 16, 32])
def test_unsupported_activation_bits_are_refused(bits):
    with pytest.raises(ValueError, match="activation bits must be one of"):
        ActivationQuantizer(bits)


@pytest.mark.parametrize("bits", WEIGHT_BITS)
def test_grid_search_error_is_the_quantizers_own(bits):
    # The initialisation's in-place error must be that of the expression the forward evaluates,
    # or it would pick a clip the quantizer does not have.
    from search_spaces.methods.quantizers import _codes, _dequantize, _squared_errors

    flat = _weight(3, (16, 72)).reshape(16, -1)
    scale = torch.rand(16, generator=torch.Generator().manual_seed(1)) * 0.1 + 0.01
    expected = (_dequantize(_codes(flat, scale, bits), scale, bits) - flat).square().sum(dim=1)
    assert torch.equal(_squared_errors(flat, scale, bits), expected)
