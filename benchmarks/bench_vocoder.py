"""Vocoder synthesis speed: seconds of audio per second of wall time, by size, threads, one at a time vs batched.

    python benchmarks/bench_vocoder.py --compare                # ours vs speechbrain's stock generator (below)
    python benchmarks/bench_vocoder.py                          # tiny and base, 1 and 2 threads
    python benchmarks/bench_vocoder.py --sizes tiny --threads 1 --num_utts 8 --seconds 4
    python benchmarks/bench_vocoder.py --device cuda --sizes base,expressive --threads 0
    python benchmarks/bench_vocoder.py --stream --sizes base,tiny --threads 1 --rounds 5 --before_rev 6957e16

For each size (``tiny``, ``base``, ``expressive`` presets of :class:`spiritlm.vocoder.VocoderConfig`;
randomly initialised unless ``--vocoder size=DIR`` names a trained one: speed does not depend on
the weights) a :class:`spiritlm.vocoder.Vocoder`
is built with weight norm folded into the convolutions (as ``from_pretrained`` does), and
``--num_utts`` random frame-rate unit dicts of ``--seconds`` (± 25 %) are synthesised through
``Vocoder.synthesize_batch`` — one at a time (batch 1) and in padded batches of
``--batch_size`` — after one untimed warm-up call; the best of ``--repeat`` runs is kept.

Faster paths are measured on the batched run and reported only where the audio stays within
``--tolerance`` (max absolute sample difference, default 1e-3) of float32: bfloat16 autocast
(always tried) and ``torch.compile`` of the generator (``--compile``, slow to compile on a CPU).
The check needs audio at a realistic level: a randomly initialised generator is near-silent, so
there a path is reported "unverified" unless a trained vocoder is given.

``--compare`` (issue 20's table): one generator (``--sizes``' first preset, Meta's 5·4·4·4·2 layout
for ``base``/``expressive``; random weights with weight-norm gains in [0.5, 1.5] so the audio is
loud) run, in the same process, alternating, ``--rounds`` times each, on one utterance of
``--seconds``:

* ``sb stock``: speechbrain's ``HifiganGenerator`` as shipped (reflection padding), loaded with the
  same state dict — issue 20's reference; it differs from Meta's audio at the edges;
* ``sb zero-pad``: the same class with its ``Conv1d``s set to zero padding — Meta's audio, and the
  forward this project ran before its own generator (``UnitHifiGAN`` subclassed speechbrain's);
* ``ours``: ``UnitHifiGAN.vocode`` (``vocoder/generator.py``), and ``Vocoder.synthesize`` end to end;

then ``--num_utts`` utterances of ``--seconds`` ± 25 % one at a time vs padded batches, and
``Vocoder.stream`` at ``chunk_frames`` 25 vs whole synthesis. Median and min of the rounds, the
ratio reference ÷ ours (> 1: ours faster) and the max |difference| of the audio.

``--stream`` (issue 20's streaming cost): for each of ``--sizes`` (random weights with loud gains,
weight norm folded) and each utterance length of ``--stream_seconds`` (random LM tokens, pitch every
2 units, style every 25, as many units as make that length with the predicted durations),
``Vocoder.stream`` fed one token at a time at each ``--chunks`` value, alternating with
``Vocoder.synthesize`` of the same tokens, ``--rounds`` rounds: median and min seconds, cost ÷
whole synthesis, max |difference| and the 1-minute load average around the rounds.
``--before_rev REV`` also runs ``vocoder/streaming.py``'s ``UnitStreamer`` of git revision REV
(e.g. 6957e16, the windowed streamer) at ``--before_chunks`` in the same rounds.
``--dur_before`` also runs, in the same rounds, whole synthesis and the stream with durations as
they were before ``DurationPredictor.infer`` (the module's forward, per token on the window of
~5 units, rounded in float32 torch), and first times the per-token duration step alone
(``UnitStreamer._expand_durations`` over the stream's growing unit list, before vs now,
alternating): µs per token, median and min of ``--rounds``.

    python benchmarks/bench_vocoder.py --stream --sizes base --threads 1 --chunks 25,100 --stream_seconds 4 --dur_before
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time

import numpy as np
import torch


def make_inputs(cfg, num_utts: int, seconds: float, seed: int = 0) -> list[dict[str, str]]:
    """Random unit dicts (frame-rate streams) of ``seconds`` ± 25 % each."""
    rng = np.random.default_rng(seed)
    items = []
    for _ in range(num_utts):
        T = max(2, int(seconds * rng.uniform(0.75, 1.25) * cfg.sample_rate / cfg.unit_hop))
        d = {"hubert": " ".join(map(str, rng.integers(0, cfg.num_units, T)))}
        if cfg.num_pitch:
            d["pitch"] = " ".join(map(str, rng.integers(0, cfg.num_pitch, -(-T // cfg.pitch_ratio))))
        if cfg.num_style:
            d["style"] = " ".join(map(str, rng.integers(0, cfg.num_style, -(-T // cfg.style_ratio))))
        items.append(d)
    return items


def timed(fn, repeat: int) -> tuple[float, list[np.ndarray]]:
    fn()  # warm-up (allocations, compilation)
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best, out  # type: ignore[return-value]


def bench_size(size: str, threads: list[int], args) -> list[dict]:
    from spiritlm.vocoder import Vocoder, VocoderConfig
    from spiritlm.vocoder.model import UnitHifiGAN, num_parameters

    trained = dict(kv.split("=", 1) for kv in args.vocoder.split(",")) if args.vocoder else {}
    if size in trained:
        voc = Vocoder.from_pretrained(trained[size], device=args.device)  # folds weight norm
        cfg = voc.config
    else:
        cfg = VocoderConfig.preset(size, num_speakers=4)
        torch.manual_seed(0)
        voc = Vocoder(UnitHifiGAN(cfg), speakers=None).to(args.device)  # folds weight norm
    assert not voc.model.has_weight_norm
    items = make_inputs(cfg, args.num_utts, args.seconds)
    audio_s = sum(len(d["hubert"].split()) for d in items) * cfg.unit_hop / cfg.sample_rate
    print(f"\n{size}: {num_parameters(voc.model) / 1e6:.2f} M parameters ({'trained: ' + trained[size] if size in trained else 'random'}), "
          f"{len(items)} utterances, {audio_s:.1f} s of audio, device {args.device}")
    rows = []
    for n in threads:
        if n:
            torch.set_num_threads(n)
        label = f"{torch.get_num_threads()} thread{'s' if torch.get_num_threads() > 1 else ''}"
        t1, _ = timed(lambda: voc.synthesize_batch(items, batch_size=1), args.repeat)
        tb, ref = timed(lambda: voc.synthesize_batch(items, batch_size=args.batch_size), args.repeat)
        row = {"size": size, "threads": torch.get_num_threads(), "audio_s": audio_s,
               "one_at_a_time_x_realtime": audio_s / t1, f"batched_{args.batch_size}_x_realtime": audio_s / tb}
        print(f"  {label}: one at a time {audio_s / t1:7.2f} s/s   batched ({args.batch_size}) {audio_s / tb:7.2f} s/s")
        for name, make in fast_paths(voc, args):
            try:
                with make() as runner:
                    tf, wavs = timed(lambda: runner(items), args.repeat)
                diff = max(float(np.max(np.abs(a - b))) for a, b in zip(wavs, ref))
            except Exception as exc:  # noqa: BLE001 - a path that does not run here is reported, not fatal
                print(f"    {name}: not available ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")
                row[f"{name}_status"] = "unavailable"
                continue
            peak = max(float(np.max(np.abs(r))) for r in ref)
            if peak < 0.1:  # randomly initialised generators are near-silent: an absolute bound says nothing
                print(f"    {name}: {audio_s / tf:7.2f} s/s batched, max |diff| {diff:.1e}, but unverified: float32 peak is "
                      f"{peak:.1e} (random weights); pass --vocoder {size}=DIR")
                row[f"{name}_status"] = f"unverified (float32 peak {peak:.1e})"
            elif diff <= args.tolerance:
                print(f"    {name}: {audio_s / tf:7.2f} s/s batched (max |diff| {diff:.1e} <= {args.tolerance:g})")
                row[f"{name}_x_realtime"] = audio_s / tf
            else:
                print(f"    {name}: rejected, max |diff| {diff:.1e} > {args.tolerance:g} of float32 (would be {audio_s / tf:.2f} s/s)")
                row[f"{name}_status"] = f"rejected (max diff {diff:.1e})"
        rows.append(row)
    return rows


def fast_paths(voc, args):
    """``(name, context manager yielding a batched runner)`` for each faster path to try."""

    @contextlib.contextmanager
    def bf16():
        dev = voc.device.type

        def run(items):
            with torch.autocast(device_type=dev, dtype=torch.bfloat16):
                return voc.synthesize_batch(items, batch_size=args.batch_size)

        yield run

    @contextlib.contextmanager
    def compiled():
        model = voc.model
        original = model.vocode
        model.vocode = torch.compile(original, dynamic=True)
        try:
            yield lambda items: voc.synthesize_batch(items, batch_size=args.batch_size)
        finally:
            model.vocode = original

    paths = [("bf16_autocast", bf16)]
    if args.compile:
        paths.append(("torch_compile", compiled))
    return paths


def _loud(model) -> None:
    """Weight-norm gains in [0.5, 1.5]: random weights with HiFi-GAN's N(0, 0.01) init are near-silent."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("original0"):
                p.uniform_(0.5, 1.5)


def _alternate(fns: dict, rounds: int) -> dict:
    """Runs each function once per round, in turn; ``{name: (median s, min s, last output)}``."""
    times: dict = {k: [] for k in fns}
    out: dict = {}
    for f in fns.values():
        f()  # warm-up
    for _ in range(rounds):
        for k, f in fns.items():
            t = time.perf_counter()
            out[k] = f()
            times[k].append(time.perf_counter() - t)
    return {k: (float(np.median(v)), float(np.min(v)), out[k]) for k, v in times.items()}


def lm_tokens(cfg, frames: int, seed: int = 3) -> list[str]:
    """``frames`` random LM speech tokens as ``Vocoder.stream`` reads them: ``[StN]`` every 25
    units, ``[PiN]`` every 2, one ``[HuN]`` each (their predicted durations set the audio length)."""
    rng = np.random.default_rng(seed)
    toks = []
    for i in range(frames):
        if cfg.num_style and i % 25 == 0:
            toks.append(f"[St{rng.integers(cfg.num_style)}]")
        if cfg.num_pitch and i % 2 == 0:
            toks.append(f"[Pi{rng.integers(cfg.num_pitch)}]")
        toks.append(f"[Hu{rng.integers(cfg.num_units)}]")
    return toks


def streamer_at(rev: str):
    """``UnitStreamer`` of ``vocoder/streaming.py`` as it was at git revision ``rev`` of this
    checkout (loaded from ``git show``, its relative imports against today's package)."""
    import importlib.util
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    src = subprocess.run(["git", "-C", root, "show", f"{rev}:vocoder/streaming.py"], capture_output=True, text=True, check=True).stdout
    mod = importlib.util.module_from_spec(importlib.util.spec_from_loader(f"spiritlm.vocoder._streaming_{rev}", loader=None))
    mod.__package__ = "spiritlm.vocoder"
    exec(compile(src, f"{rev}:vocoder/streaming.py", "exec"), mod.__dict__)
    return mod.UnitStreamer


def _module_expand_durations(self, units: list[int], final: bool) -> None:
    """``UnitStreamer._expand_durations`` as it was before ``DurationPredictor.infer`` (git
    cc4160c^): the module's forward on the window of units around the newly settled ones."""
    n = len(units)
    n_dur = n if final else max(0, n - self.dctx)
    done = self._units_expanded
    if n_dur <= done:
        return
    if self.dur_pred:
        lo = max(0, done - self.dctx)
        u = torch.as_tensor(units[lo:n], device=self.dev)[None]
        frames = _old_durations_from_log(_module_log_durations(self.model, u))[0, done - lo : n_dur - lo].tolist()
    else:
        frames = [1] * (n_dur - done)
    for i, f in zip(range(done, n_dur), frames):
        self.frame_unit.extend([i] * int(f))
    self._units_expanded = n_dur


def _module_log_durations(model, units, lengths=None):
    """``UnitHifiGAN.predict_durations`` before ``DurationPredictor.infer``: always the module."""
    from spiritlm.tensors import length_mask

    x = model.unit_embedding(units).transpose(1, 2)
    mask = None if lengths is None else length_mask(lengths.to(x.device), x.size(-1))
    return model.duration_predictor(x, mask)


def _old_durations_from_log(log_d):
    """``durations_from_log`` before ``frames_from_log``: float32 torch."""
    return torch.clamp(torch.round(torch.exp(log_d) - 1).long(), min=1)


@contextlib.contextmanager
def module_durations(voc):
    """Runs ``voc`` with durations as before ``DurationPredictor.infer``: whole synthesis through
    the module's forward and float32 rounding; ``UnitStreamer`` through the module per token."""
    from spiritlm.vocoder import model as model_mod
    from spiritlm.vocoder.streaming import UnitStreamer

    saved = (model_mod.durations_from_log, UnitStreamer._expand_durations)
    voc.model.predict_durations = lambda units, lengths=None: _module_log_durations(voc.model, units, lengths)
    model_mod.durations_from_log, UnitStreamer._expand_durations = _old_durations_from_log, _module_expand_durations
    try:
        yield
    finally:
        del voc.model.predict_durations  # the instance attribute: back to the class's method
        model_mod.durations_from_log, UnitStreamer._expand_durations = saved


def duration_token_cost(voc, units: int, rounds: int, seed: int = 3) -> dict:
    """µs per token of ``UnitStreamer._expand_durations`` (the stream's duration work: called once
    per token with the settled units so far, then once at the end), before (module per window)
    vs now (``DurationPredictor.infer``), alternating, ``rounds`` rounds; checks both give the
    same frames."""
    from spiritlm.vocoder.streaming import UnitStreamer

    cfg = voc.config
    ids = [int(t[3:-1]) for t in lm_tokens(cfg, units, seed) if t.startswith("[Hu")]

    def run(expand) -> tuple[float, list[int]]:  # the streamer's construction is not timed
        s = UnitStreamer(voc.model, speaker=0, style_id=0, dur_pred=True, chunk_frames=25)
        t = time.perf_counter()
        for n in range(1, len(ids) + 1):
            expand(s, ids[:n], False)
        expand(s, ids, True)
        return time.perf_counter() - t, s.frame_unit

    paths = {"before (module per window)": _module_expand_durations, "now (DurationPredictor.infer)": UnitStreamer._expand_durations}
    times: dict = {k: [] for k in paths}
    out: dict = {}
    load0 = os.getloadavg()
    with torch.inference_mode():
        for k, f in paths.items():
            run(f)  # warm-up (the inference weights' cache, allocations)
        for _ in range(rounds):
            for k, f in paths.items():
                dt, out[k] = run(f)
                times[k].append(dt)
    load = f"{load0[0]:.1f} -> {os.getloadavg()[0]:.1f}"
    res = {k: (float(np.median(v)), float(np.min(v)), out[k]) for k, v in times.items()}
    (b_med, b_min, b_out), (n_med, n_min, n_out) = res.values()
    per = len(ids) + 1
    print(f"\n  duration step per token ({len(ids)} units, {rounds} alternating rounds, {torch.get_num_threads()} thread(s), "
          f"load (1 min) {load}); same frames: {b_out == n_out}")
    for k, (med, mn, _) in res.items():
        print(f"  {k:32s} {med / per * 1e6:8.1f} us median {mn / per * 1e6:8.1f} us min")
    print(f"  {'speed-up':32s} {b_med / n_med:8.2f}x median {b_min / n_min:8.2f}x min")
    return {"path": "duration step per token", "before_us_median": b_med / per * 1e6, "before_us_min": b_min / per * 1e6,
            "now_us_median": n_med / per * 1e6, "now_us_min": n_min / per * 1e6, "same_frames": b_out == n_out, "load": load}


def stream_cost(voc, units: int, chunks: list[int], rounds: int, seed: int = 3, before: str | None = None,
                before_chunks: list[int] = (), dur_before: bool = False) -> list[dict]:
    """``Vocoder.stream`` at each of ``chunks`` vs ``Vocoder.synthesize`` of the same ``units``
    random LM tokens, alternating, ``rounds`` rounds; prints and returns median / min seconds,
    cost ÷ whole synthesis (median and min), max |difference| and the load average around it.
    ``before``: a git revision whose ``UnitStreamer`` also runs, at ``before_chunks``, in the same rounds.
    ``dur_before``: whole synthesis and the stream at ``chunks`` also run with the durations of
    before ``DurationPredictor.infer`` (:func:`module_durations`); their cost ratio is to that whole."""
    from spiritlm.vocoder import api

    cfg = voc.config
    toks = lm_tokens(cfg, units, seed)
    ours, old = api.UnitStreamer, streamer_at(before) if before else None

    def run(streamer, c):
        api.UnitStreamer = streamer
        try:
            return np.concatenate(list(voc.stream(toks, chunk_frames=c)))
        finally:
            api.UnitStreamer = ours

    fns = {"whole": lambda: voc.synthesize("".join(toks))}
    for c in chunks:
        fns[f"stream ({c} frames)"] = lambda c=c: run(ours, c)
    for c in before_chunks if old else ():
        fns[f"{before}: stream ({c})"] = lambda c=c: run(old, c)
    if dur_before:
        def with_module(fn):
            def go():
                with module_durations(voc):
                    return fn()
            return go

        fns["whole, module durations"] = with_module(lambda: voc.synthesize("".join(toks)))
        for c in chunks:
            fns[f"stream ({c}), module durations"] = with_module(lambda c=c: run(ours, c))
    load0 = os.getloadavg()
    with torch.inference_mode():
        res = _alternate(fns, rounds)
    load = f"{load0[0]:.1f} -> {os.getloadavg()[0]:.1f}"
    whole = res["whole"]
    audio_s = whole[2].size / cfg.sample_rate
    print(f"\n  stream of {len(toks)} tokens ({audio_s:.1f} s with predicted durations), context {voc.model.context_frames} frames, "
          f"{rounds} alternating rounds, {torch.get_num_threads()} thread(s), load (1 min) {load}")
    print(f"  {'path':36s} {'median s':>9s} {'min s':>8s} {'cost vs whole (median / min)':>29s}  max |diff|")
    rows = []
    for k, (med, mn, out) in res.items():
        ref = res["whole, module durations"] if k.endswith("module durations") else whole  # each against its own whole
        diff = float(np.abs(out - ref[2]).max()) if out.shape == ref[2].shape else float("inf")
        med_w, min_w = ref[0], ref[1]
        print(f"  {k:36s} {med:9.3f} {mn:8.3f} {med / med_w:14.2f} / {mn / min_w:5.2f}       {diff:.1e}")
        rows.append({"path": k, "median_s": med, "min_s": mn, "audio_s": audio_s, "cost_vs_whole": med / med_w,
                     "cost_vs_whole_min": mn / min_w, "max_abs_diff": diff, "load": load})
    return rows


def units_for_seconds(voc, seconds: float, seed: int = 3) -> int:
    """How many of :func:`lm_tokens`' units make ``seconds`` of audio with ``voc``'s predicted durations."""
    from spiritlm.vocoder.model import durations_from_log

    cfg = voc.config
    frames = max(1, round(seconds * cfg.sample_rate / cfg.unit_hop))
    units = [int(t[3:-1]) for t in lm_tokens(cfg, frames, seed) if t.startswith("[Hu")]
    with torch.inference_mode():
        dur = durations_from_log(voc.model.predict_durations(torch.tensor([units], device=voc.device)))[0].cumsum(0)
    return int(torch.searchsorted(dur, frames).item()) + 1


def stream(args) -> list[dict]:
    """``--stream``: :func:`stream_cost` for each of ``--sizes`` (random weights with loud gains,
    weight norm folded) and each utterance length of ``--stream_seconds``."""
    from spiritlm.vocoder import Vocoder, VocoderConfig
    from spiritlm.vocoder.model import UnitHifiGAN

    torch.set_num_threads(max(1, int(args.threads.split(",")[0]) or 1))
    rows = []
    for size in args.sizes.split(","):
        cfg = VocoderConfig.preset(size.strip(), num_speakers=4)
        torch.manual_seed(0)
        model = UnitHifiGAN(cfg)
        _loud(model)
        voc = Vocoder(model)  # folds weight norm
        for seconds in (float(v) for v in args.stream_seconds.split(",")):
            units = units_for_seconds(voc, seconds)
            print(f"\n{size} (harmonic source: {cfg.harmonic_source}), ~{seconds:g} s requested")
            if args.dur_before:
                rows.append({"size": size, "seconds": seconds, **duration_token_cost(voc, units, args.rounds)})
            for r in stream_cost(voc, units, [int(c) for c in args.chunks.split(",")], args.rounds, before=args.before_rev,
                                 before_chunks=[int(c) for c in args.before_chunks.split(",")], dur_before=args.dur_before):
                rows.append({"size": size, "seconds": seconds, **r})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"argv": sys.argv, "stream": rows}, f, indent=1)
    return rows


def compare(args) -> list[dict]:
    """Issue 20's side-by-side table (see the module docstring); returns its rows."""
    from speechbrain.lobes.models.HifiGAN import HifiganGenerator
    from speechbrain.nnet.CNN import Conv1d as SBConv1d

    from spiritlm.vocoder import Vocoder, VocoderConfig
    from spiritlm.vocoder.model import UnitHifiGAN

    size = args.sizes.split(",")[0].strip()
    cfg = VocoderConfig.preset(size, num_speakers=4)
    torch.manual_seed(0)
    model = UnitHifiGAN(cfg)
    _loud(model)
    voc = Vocoder(model)  # folds weight norm
    gen_state = {k: v for k, v in voc.model.state_dict().items() if k.startswith(("conv_pre.", "ups.", "resblocks.", "conv_post."))}

    def stock(zero_pad: bool):
        g = HifiganGenerator(cfg.in_channels, 1, "1", cfg.resblock_dilation_sizes, cfg.resblock_kernel_sizes,
                             cfg.upsample_kernel_sizes, cfg.upsample_initial_channel, cfg.upsample_rates, inference_padding=0)
        g.remove_weight_norm()
        g.load_state_dict(gen_state, strict=True)
        if zero_pad:
            for m in g.modules():
                if isinstance(m, SBConv1d):
                    m.padding_mode = "constant"
        return g.eval()

    sb_stock, sb_zero = stock(False), stock(True)
    torch.set_num_threads(max(1, int(args.threads.split(",")[0]) or 1))
    item = make_inputs(cfg, 1, args.seconds, seed=1)[0]
    item_T = len(item["hubert"].split())
    p = voc.prepare(item)
    x = voc.model.embed(torch.from_numpy(p["units"])[None], None if p["pitch"] is None else torch.from_numpy(p["pitch"])[None],
                        None if p["style"] is None else torch.from_numpy(p["style"])[None], torch.tensor([0]), aligned=True)
    if voc.model.source is not None:
        print(f"note: {size} has a harmonic source, which speechbrain's generator lacks: the generator rows use Meta's layout only "
              "for presets without one (base, expressive)")
    audio_s = item_T * cfg.unit_hop / cfg.sample_rate
    print(f"\n{size} (harmonic source: {cfg.harmonic_source}), one utterance of {audio_s:.1f} s, {args.rounds} alternating rounds, "
          f"{torch.get_num_threads()} thread(s)")
    with torch.inference_mode():
        fns = {"sb stock (reflection)": lambda: sb_stock(x), "sb zero-pad (before)": lambda: sb_zero(x),
               "ours vocode": lambda: voc.model.vocode(x), "ours synthesize": lambda: torch.from_numpy(voc.synthesize(item))[None, None]}
        if voc.model.source is not None:
            fns = {k: v for k, v in fns.items() if not k.startswith("sb")}
        res = _alternate(fns, args.rounds)
    ours_med, ours_min, ours_out = res["ours vocode"]
    hop = cfg.unit_hop
    edge = voc.model.context_frames * hop  # beyond the receptive field of the edges' padding
    rows = []
    print(f"  {'path':24s} {'median s':>9s} {'min s':>8s} {'x real time':>11s} {'ratio (med)':>11s} {'ratio (min)':>11s}  max |diff| vs ours")
    for k, (med, mn, out) in res.items():
        d = (out.reshape(-1) - ours_out.reshape(-1)).abs()
        mid = float(d[edge:-edge].max()) if d.numel() > 2 * edge else float("nan")
        diff = f"{float(d.max()):.1e} (middle {mid:.1e})"
        print(f"  {k:24s} {med:9.3f} {mn:8.3f} {audio_s / med:11.2f} {med / ours_med:11.2f} {mn / ours_min:11.2f}  {diff}")
        rows.append({"path": k, "median_s": med, "min_s": mn, "ratio_median": med / ours_med, "ratio_min": mn / ours_min,
                     "max_abs_diff": float(d.max()), "max_abs_diff_middle": mid})

    # batched vs one at a time, per second of audio
    items = make_inputs(cfg, args.num_utts, args.seconds, seed=2)
    total_s = sum(len(d["hubert"].split()) for d in items) * hop / cfg.sample_rate
    with torch.inference_mode():
        res_b = _alternate({"one at a time": lambda: voc.synthesize_batch(items, batch_size=1),
                            f"padded batch {args.batch_size}": lambda: voc.synthesize_batch(items, batch_size=args.batch_size),
                            "default (None)": lambda: voc.synthesize_batch(items)}, max(3, args.rounds // 2))
    one = res_b["one at a time"]
    print(f"\n  {args.num_utts} utterances, {total_s:.1f} s of audio (default batch size on {voc.device.type}: {voc.default_batch_size})")
    for k, (med, mn, out) in res_b.items():
        diff = max(float(np.abs(a - b).max()) for a, b in zip(out, one[2]))
        print(f"  {k:24s} {med:9.3f} {mn:8.3f} {total_s / med:11.2f} x real time, ratio vs one at a time {one[0] / med:5.2f}, max |diff| {diff:.1e}")
        rows.append({"path": k, "median_s": med, "min_s": mn, "audio_s": total_s, "max_abs_diff": diff})

    # streaming vs whole synthesis of the same tokens
    rows += stream_cost(voc, item_T, [25, 100], max(3, args.rounds // 2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"argv": sys.argv, "compare": rows}, f, indent=1)
    return rows


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="tiny,base", help="comma-separated presets (tiny, base, expressive)")
    p.add_argument("--threads", default="1,2", help="comma-separated torch thread counts (0: torch's default)")
    p.add_argument("--num_utts", type=int, default=4, help="utterances per run")
    p.add_argument("--seconds", type=float, default=3.0, help="mean utterance length (s)")
    p.add_argument("--batch_size", type=int, default=4, help="utterances per batch in the batched run")
    p.add_argument("--repeat", type=int, default=2, help="timed runs (the best is kept)")
    p.add_argument("--tolerance", type=float, default=1e-3, help="max |sample difference| of a faster path vs float32")
    p.add_argument("--compile", action="store_true", help="also try torch.compile of the generator")
    p.add_argument("--vocoder", default="", help="trained vocoders to use instead of random weights: SIZE=DIR[,SIZE=DIR]")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--compare", action="store_true", help="ours vs speechbrain's stock generator, batched and streamed (issue 20)")
    p.add_argument("--rounds", type=int, default=7, help="alternating rounds of --compare and --stream")
    p.add_argument("--stream", action="store_true", help="Vocoder.stream vs synthesize of the same tokens, per chunk size (issue 20)")
    p.add_argument("--stream_seconds", default="4,16", help="--stream: utterance lengths (s)")
    p.add_argument("--chunks", default="1,5,25,100", help="--stream: chunk_frames values")
    p.add_argument("--before_rev", default=None, help="--stream: also time UnitStreamer of this git revision (e.g. 6957e16, windowed)")
    p.add_argument("--before_chunks", default="25,100", help="--stream --before_rev: its chunk_frames values")
    p.add_argument("--dur_before", action="store_true",
                   help="--stream: also time durations as before DurationPredictor.infer (module per token), per token and end to end")
    return p


def main() -> None:
    args = parser().parse_args()

    print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"python {platform.python_version()}")
    print("command: python " + " ".join(sys.argv))
    if args.compare:
        compare(args)
        return
    if args.stream:
        stream(args)
        return
    rows = []
    for size in args.sizes.split(","):
        rows += bench_size(size.strip(), [int(t) for t in args.threads.split(",")], args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"argv": sys.argv, "results": rows}, f, indent=1)


if __name__ == "__main__":
    main()
