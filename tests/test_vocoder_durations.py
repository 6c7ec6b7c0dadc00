"""The duration predictor's inference path (DurationPredictor.infer): the module's values to float
rounding, and the same bits for a unit whatever window it is computed from, so that streaming
(a few units per token) gives every unit the duration whole synthesis gives it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spiritlm.vocoder import VocoderConfig
from spiritlm.vocoder.model import DurationPredictor, UnitHifiGAN, durations_from_log, frames_from_log
from spiritlm.vocoder.streaming import UnitStreamer


def trained_scale(model: UnitHifiGAN, seed: int = 0, mean_frames: float = 4.0, spread: float = 0.7) -> UnitHifiGAN:
    """Random weights with a trained predictor's output range: log(1 + frames) around
    log(1 + mean_frames) with standard deviation ~``spread``, so durations run ~1..15 frames and
    many units fall near a half frame (random weights put nearly all of them at 1)."""
    dp = model.duration_predictor
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        h = dp.proj.weight.size(1)
        dp.proj.weight.copy_(torch.randn(dp.proj.weight.shape, generator=g) * spread / math.sqrt(h))
        dp.proj.bias.fill_(math.log1p(mean_frames))
        for norm in (dp.norm1, dp.norm2):  # trained layer norms are not the identity
            norm.weight.copy_(1 + 0.3 * torch.randn(norm.weight.shape, generator=g))
            norm.bias.copy_(0.1 * torch.randn(norm.bias.shape, generator=g))
    return model.eval()


def make_model(preset: str = "tiny", seed: int = 0, **kw) -> UnitHifiGAN:
    torch.manual_seed(seed)
    base = dict(num_units=100, embedding_dim=16, duration_hidden=24, upsample_initial_channel=32, harmonic_source=False)
    base.update(kw)
    return trained_scale(UnitHifiGAN(VocoderConfig.preset(preset, **base)), seed)


def whole(model: UnitHifiGAN, units: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return model.predict_durations(torch.tensor([units]))[0]


@pytest.mark.parametrize("kw", [{}, dict(duration_hidden=17, embedding_dim=5), dict(duration_kernel=5), dict(duration_kernel=1)])
def test_infer_equals_the_module_to_rounding(kw):
    model = make_model(**kw)  # odd hidden size (tree sum's odd rows), kernels 5 (context 4) and 1 (none)
    rng = np.random.default_rng(1)
    units = torch.tensor(rng.integers(0, 100, (4, 90)))
    lengths = torch.tensor([90, 1, 37, 64])
    ref = model.predict_durations(units, lengths).detach()  # autograd on: the module
    assert ref.requires_grad is False and model.duration_predictor.training is False
    with torch.inference_mode():
        got = model.predict_durations(units, lengths)
    frames_ref, frames_got = durations_from_log(ref), durations_from_log(got)
    near = torch.zeros_like(ref, dtype=torch.bool)
    for b, n in enumerate(lengths.tolist()):
        np.testing.assert_allclose(got[b, :n].numpy(), ref[b, :n].numpy(), rtol=0, atol=1e-5)
        frac = torch.exp(ref[b, :n].double()) - 1
        near[b, :n] = (frac - frac.floor() - 0.5).abs() < 1e-4  # where rounding may go either way
        ok = ~near[b, :n]
        assert torch.equal(frames_got[b, :n][ok], frames_ref[b, :n][ok])
    assert len(set(frames_ref[0].tolist())) >= 5  # the scale is a trained one's: durations vary


def test_a_unit_gets_the_same_bits_from_any_window():
    model = make_model()
    w = model.duration_predictor.inference_weights(model.unit_embedding.weight)
    q = 2 * w.p
    rng = np.random.default_rng(2)
    for _ in range(20):
        T = int(rng.integers(1, 80))
        ids = np.concatenate([[w.pad] * q, rng.integers(0, 100, T), [w.pad] * q])
        ref = DurationPredictor.infer(w, ids)  # [T]
        assert ref.shape == (T,)
        np.testing.assert_array_equal(ref, whole(model, ids[q:-q].tolist()).numpy())
        for i in range(T):  # windows of random extents and chunkings around position i
            lo, hi = int(rng.integers(0, i + 1)), int(rng.integers(i + 1, T + 1))
            got = DurationPredictor.infer(w, ids[lo : hi + 2 * q], chunk=int(rng.integers(1, 20)))
            assert got[i - lo] == ref[i], (T, i, lo, hi)


def test_batch_rows_equal_one_at_a_time_bit_for_bit():
    model = make_model()
    rng = np.random.default_rng(3)
    units = torch.tensor(rng.integers(0, 100, (5, 40)))
    lengths = torch.tensor([40, 3, 1, 39, 22])
    with torch.inference_mode():
        batch = model.predict_durations(units, lengths)
        for b, n in enumerate(lengths.tolist()):
            assert torch.equal(batch[b, :n], model.predict_durations(units[b : b + 1, :n])[0])


def stream_frames(model: UnitHifiGAN, units: list[int], tokens_per_step: list[int]) -> list[int]:
    """The streamer's unit index of every frame, units arriving ``tokens_per_step`` at a time."""
    s = UnitStreamer(model, speaker=0, style_id=0, dur_pred=True, chunk_frames=1)
    n = 0
    with torch.inference_mode():
        for k in tokens_per_step:
            n = min(len(units), n + k)
            s._expand_durations(units[:n], final=False)
        s._expand_durations(units, final=True)
    return s.frame_unit


def test_streamed_durations_equal_whole_on_200_random_streams():
    """Streams of 1..60 units, one or a few tokens at a time, on 4 models: the frames of every
    unit equal whole synthesis' (durations_from_log of predict_durations over the utterance)."""
    rng = np.random.default_rng(4)
    seen: set[int] = set()
    for seed in range(4):
        model = make_model(seed=seed, **({} if seed % 2 else dict(duration_hidden=64, embedding_dim=48)))
        for _ in range(50):
            units = rng.integers(0, 100, int(rng.integers(1, 61))).tolist()
            frames = durations_from_log(whole(model, units)).tolist()
            expect = [i for i, f in enumerate(frames) for _ in range(f)]
            steps = rng.integers(1, 4, len(units)).tolist()
            assert stream_frames(model, units, steps) == expect
            seen.update(frames)
    assert len(seen) >= 8  # durations of many sizes were compared, not only clamped 1s


def test_training_keeps_the_differentiable_module():
    model = make_model()
    dp = model.duration_predictor
    units = torch.randint(0, 100, (2, 12))
    x = model.unit_embedding(units).transpose(1, 2)
    out = model.predict_durations(units)
    assert out.grad_fn is not None and torch.equal(out, dp(x))
    dp.train()
    with torch.no_grad():  # training mode under no_grad (dropout on): still the module
        torch.manual_seed(5)
        a = model.predict_durations(units)
        torch.manual_seed(5)
        assert torch.equal(a, dp(x))
    dp.eval()
    out.pow(2).mean().backward()
    assert dp.conv1.weight.grad is not None and model.unit_embedding.weight.grad is not None


def test_inference_weights_follow_weight_changes():
    model = make_model()
    units = torch.randint(0, 100, (1, 30))
    with torch.inference_mode():
        before = model.predict_durations(units)
    with torch.no_grad():
        model.duration_predictor.conv2.weight.mul_(1.5)  # an in-place edit (as an optimiser step)
        model.unit_embedding.weight[units[0, 3]] += 1.0
    with torch.inference_mode():
        after = model.predict_durations(units)
    np.testing.assert_allclose(after.numpy(), model.predict_durations(units).detach().numpy(), atol=1e-5)
    assert not torch.allclose(before, after)
    other = make_model(seed=7)
    model.load_state_dict(other.state_dict())
    with torch.inference_mode():
        assert torch.equal(model.predict_durations(units), other.predict_durations(units))


def test_frames_from_log():
    assert frames_from_log([math.log(1.5), math.log(2.5), math.log(3.5001), -3.0]) == [1, 2, 3, 1]  # halves to even
    assert frames_from_log([1e6]) == [round(math.exp(30.0) - 1)]  # clamped short of overflow
    with pytest.raises(ValueError, match="NaN"):
        frames_from_log([0.5, float("nan")])
    with pytest.raises(IndexError, match="unit ids must be in 0..99"):
        with torch.inference_mode():
            make_model().predict_durations(torch.tensor([[1, 100]]))


@pytest.mark.parametrize("chunk_frames", [1, 25])
def test_stream_audio_equals_whole_with_trained_scale_durations(chunk_frames):
    from spiritlm.vocoder import Vocoder

    model = make_model(seed=3, num_speakers=2)
    with torch.no_grad():  # loud enough that a one-frame shift would show (Vocoder folds weight norm)
        for name, p in model.named_parameters():
            if name.endswith("original0"):
                p.uniform_(0.5, 1.5)
    voc = Vocoder(model)
    toks = [f"[Hu{u}]" for u in np.random.default_rng(6).integers(0, 100, 40)]
    whole = voc.synthesize("".join(toks), speaker=1)
    with torch.inference_mode():
        frames = durations_from_log(voc.model.predict_durations(torch.tensor([[int(t[3:-1]) for t in toks]])))[0]
    assert whole.size == int(frames.sum()) * 640 and len(set(frames.tolist())) >= 4
    got = np.concatenate(list(voc.stream(toks, speaker=1, chunk_frames=chunk_frames)))
    assert got.shape == whole.shape and np.abs(whole).max() > 0.05
    np.testing.assert_allclose(got, whole, atol=1e-5)
