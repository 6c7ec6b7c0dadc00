"""The one LLaMA forward used for decoding and scoring: fairseq2's modules, our cache and positions.

fairseq2 0.8.1's ``BatchLayout`` describes right padding only and its incremental attention
refuses padded batches (``"`keys` must not be a padded batch."``), while batched decoding needs
left padding (every row's next token lands in the same column). fairseq2's own
``SequenceGenerator`` decodes one step per prompt column for the shorter prompts and keeps a
growing cache; it has no static cache and no per-row seeded sampling. So :class:`LlamaDecoder`
calls the model's own modules (embedding, RMSNorms, projections, GLU FFN, the
``RotaryEncoder``'s frequency table) with explicit per-row positions, a key mask and a cache
preallocated once per batch:

* row ``b`` with ``p_b`` pad columns gives its real tokens RoPE positions ``0, 1, …`` (the
  positions of a batch of one, so greedy paths agree whatever the batch);
* keys in pad columns are masked out; a pad query attends to itself only (no attention row is
  empty, which would give NaN); its output is never read.

:func:`check_supported` refuses a model whose structure differs from what this forward
reimplements (a fairseq2 upgrade that changes a module fails there, or in the tests that
compare these logits with fairseq2's own forward and with transformers, instead of drifting).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.nn.functional import scaled_dot_product_attention

from fairseq2.nn import BatchLayout

__all__ = ["LlamaDecoder", "PackedWeights", "UnsupportedModelError", "check_supported", "use_cpu_weight_layout"]


class UnsupportedModelError(ValueError):
    """The model is not the pre-norm RoPE LLaMA that :class:`LlamaDecoder` runs."""


def check_supported(model: Any) -> None:
    """Raises :class:`UnsupportedModelError` naming the first structural difference from the
    pre-norm LLaMA (RoPE, causal attention, no QK norms, no embedding scale) this forward runs."""
    from fairseq2.models.transformer import CausalAttentionBias, TransformerNormOrder
    from fairseq2.nn import RotaryEncoder

    try:
        layers = list(model.decoder.layers)
        frontend = model.decoder_frontend
        checks = [
            (bool(layers), "no decoder layers"),
            (getattr(frontend, "pos_encoder", None) is None, "the frontend adds positions"),
            (getattr(frontend, "scale", 1.0) == 1.0, "the frontend scales embeddings"),
        ]
        for n, layer in enumerate(layers):
            attn = layer.self_attn
            bias = attn.sdpa.bias
            checks += [
                (layer.norm_order == TransformerNormOrder.PRE, f"layer {n} is not pre-norm"),
                (isinstance(attn.pos_encoder, RotaryEncoder), f"layer {n} has no rotary encoder"),
                (attn.q_norm is None and attn.k_norm is None and getattr(attn, "v_norm", None) is None,
                 f"layer {n} normalizes q/k/v"),
                (isinstance(bias, CausalAttentionBias) and getattr(bias, "attn_window_len", None) is None,
                 f"layer {n} is not plain causal attention"),
                (getattr(attn.sdpa, "scale", None) is None, f"layer {n} scales attention"),
            ]
    except AttributeError as e:
        raise UnsupportedModelError(f"not a fairseq2 LLaMA decoder: {e}") from None
    for ok, why in checks:
        if not ok:
            raise UnsupportedModelError(f"the decoder runs pre-norm RoPE LLaMA models only: {why}")


def use_cpu_weight_layout(model: Any) -> bool:
    """Stores a CPU model's projection weights column-major (same values, transposed strides).

    ``F.linear(x, W)`` computes ``x @ W.T``; with ``W`` row-major (PyTorch's default) MKL runs it
    as a transposed GEMM, which for the few rows of a decoding step (one per sequence) streams
    the weights in dot-product order. With ``W.T`` contiguous the same product is a plain GEMM
    that vectorizes over output features: on the 2-core EPYC ~1.5x faster per decoding step for
    a 61 M-parameter model at batch 1 and at batch 16, greedy ids unchanged
    (``benchmarks/bench_decode.py``). The model stays usable everywhere (fairseq2's forward
    reads any strides); saving it needs ``.contiguous()`` tensors. Tied embeddings are left as
    they are (a column-major table would slow every embedding lookup).

    Returns:
        Whether the layout was applied (a CPU LLaMA :func:`check_supported` accepts).
    """
    try:
        check_supported(model)
    except UnsupportedModelError:
        return False
    if model.final_proj.weight.device.type != "cpu":
        return False
    projections = []
    for layer in model.decoder.layers:
        attn, ffn = layer.self_attn, layer.ffn
        projections += [attn.q_proj, attn.k_proj, attn.v_proj, attn.output_proj]
        projections += [getattr(ffn, name) for name in ("gate_proj", "inner_proj", "output_proj") if hasattr(ffn, name)]
    if model.final_proj.weight is not model.decoder_frontend.embed.weight:
        projections.append(model.final_proj)
    with torch.no_grad():
        for proj in projections:
            w = proj.weight
            if w.dim() == 2 and w.is_contiguous():
                w.data = w.data.t().contiguous().t()
    return True


def _onednn_linear_ops() -> tuple[Any, Any] | None:
    """torch's oneDNN weight packing and packed linear (the ops ``torch.compile``'s CPU backend
    uses), or None where this build lacks them."""
    if not torch.backends.mkldnn.is_available():
        return None
    ops = torch.ops.mkldnn
    try:
        return ops._reorder_linear_weight, ops._linear_pointwise
    except (AttributeError, RuntimeError):
        return None


def _native_bf16_matmul() -> bool:
    """Whether oneDNN runs bf16 products in hardware here (AVX512-BF16 or AMX; not emulated, which
    would be slower than fp32, and not under ``ONEDNN_MAX_CPU_ISA=AVX2``, see spiritlm.numerics)."""
    cpu = torch._C._cpu
    try:
        native = cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported()
    except AttributeError:
        return False
    return bool(native and torch.ops.mkldnn._is_mkldnn_bf16_supported())


class PackedWeights:
    """oneDNN-packed copies of a CPU float32 LLaMA's projections, for forwards of several rows.

    On the 2-core EPYC, MKL's fp32 GEMM reaches ~30 GFLOP/s for the 16-row products of a batched
    decoding step (``[16, 512] @ [512, 32768]``: ~17-21 ms), where oneDNN's ``_linear_pointwise``
    on a weight pre-reordered to its blocked layout runs the same product in ~9 ms and the layer
    projections ~1.6x faster; q/k/v are packed as one ``[3·N, M]`` product and the GLU's gate and
    inner projections as another (fewer, larger calls). For one row (a decoding step of one
    prompt) the column-major layout of :func:`use_cpu_weight_layout` is faster (memory-bound
    GEMV), so :class:`LlamaDecoder` uses these only for products of more than one row.

    The packed copies are extra memory (one more copy of the projections, not of the embedding,
    plus a bf16 copy of the output projection for :meth:`greedy`, half its size), so they are
    built only below :attr:`MAX_BYTES`; values differ from ``F.linear`` by float rounding only
    (checked once per model at packing time, else packing is skipped).

    :meth:`greedy` picks greedy ids without the fp32 output projection (the largest product of a
    decoding step): a bf16 product bounds every logit, and the few ids that can be the arg-max
    are recomputed in fp32. It runs for one row too (a one-prompt greedy step).
    """

    MAX_BYTES = 2 * 2**30

    def __init__(self, model: Any, pack: Any, run: Any) -> None:
        self._run = run
        self.layers: list[dict[str, Any]] = []
        for layer in model.decoder.layers:
            attn, ffn = layer.self_attn, layer.ffn
            qkv = [attn.q_proj, attn.k_proj, attn.v_proj]
            glu = [ffn.gate_proj, ffn.inner_proj]
            self.layers.append({
                "qkv": pack(torch.cat([p.weight for p in qkv]).contiguous(), 16),
                "qkv_split": [p.weight.size(0) for p in qkv],
                "o": pack(attn.output_proj.weight.contiguous(), 16),
                "glu": pack(torch.cat([p.weight for p in glu]).contiguous(), 16),
                "glu_split": [p.weight.size(0) for p in glu],
                "down": pack(ffn.output_proj.weight.contiguous(), 16),
            })
        self.final = pack(model.final_proj.weight.contiguous(), 16)
        # greedy screening (:meth:`greedy`): a bf16 copy of the output projection, its rows' norms
        # and the fp32 rows for the exact re-check of the few candidates
        self.final_fp32 = model.final_proj.weight.detach().contiguous()  # [V, M]
        self.final_bf16 = pack(self.final_fp32.bfloat16(), 16) if _native_bf16_matmul() else None
        self.final_norm_max = float(self.final_fp32.norm(dim=1).max())  # max_v |W_v|

    def linear(self, x: Tensor, w: Tensor) -> Tensor:
        """``x @ W.T`` of a packed ``w`` (any leading dims of ``x``)."""
        return self._run(x, w, None, "none", [], "")

    # Every bf16-screened logit is within SLACK·|h|·max_v |W_v| (+ TINY) of the fp32 one. Per
    # product, bf16 rounding of h_i and W_vi (2^-8 each) and of the output (2^-8 of |logit|
    # <= |h|·|W_v|): 3·2^-8 + O(2^-16) of sum_i |h_i·W_vi| <= |h|·|W_v|; fp32 accumulation of up
    # to 4096 terms, here and in the fp32 re-check: < 5e-4 of it. 2^-6 (0.0156) > 0.0123 needed.
    # TINY covers the flushing of denormals to zero (K·2^-126·|W| for any realistic weights).
    SLACK = 2.0**-6
    TINY = 2.0**-100

    def greedy(self, hidden: Tensor, banned: Tensor | None) -> Tensor | None:
        """Greedy ids ``[B]`` of final-normed ``hidden`` ``[B, M]``: the arg-max of the fp32 logits
        (lowest id on ties), ``banned`` ``[B, V]`` ids excluded, without the fp32 output
        projection. None where this build has no bf16 matmul or a value is not finite.

        A bf16 product (half the bytes of the largest matrix of a decoding step, ~2x faster on CPUs
        with AVX512-BF16) gives every logit of row ``r`` within ``e_r`` (:attr:`SLACK`) of its fp32
        value, so the arg-max is among the ids within ``2·e_r`` of the row's best bf16 logit
        (usually 1-60 of 32k); only those are recomputed in fp32 (``hidden_r · W_v``) and compared.
        The ids are those of the fp32 logits, up to the float rounding of that dot product (as
        between any two fp32 matmul kernels).
        """
        if self.final_bf16 is None:
            return None
        B, V = hidden.size(0), self.final_fp32.size(0)
        approx = self.linear(hidden.to(torch.bfloat16), self.final_bf16).float()  # [B, V] (bf16 values)
        if banned is not None:
            approx.masked_fill_(banned, float("-inf"))
        window = hidden.norm(dim=-1, keepdim=True).mul_(2 * self.SLACK * self.final_norm_max).add_(2 * self.TINY)
        # candidates: ids with approx >= threshold, found through the maxima of G-id groups (id
        # k·(V/G) + j in group j), as a [B, V] comparison and nonzero cost ~10x a max on CPU
        G = next(g for g in (8, 4, 2, 1) if V % g == 0)
        groups = approx.view(B, G, V // G)
        group_max = groups.amax(1)  # [B, V / G]
        threshold = group_max.amax(-1, keepdim=True) - window  # [B, 1]
        r, j = (group_max >= threshold).nonzero(as_tuple=True)
        c, k = (groups[r, :, j] >= threshold[r]).nonzero(as_tuple=True)
        rows, cols = r[c], k * (V // G) + j[c]
        exact = (hidden.index_select(0, rows) * self.final_fp32.index_select(0, cols)).sum(-1)
        if banned is not None:  # every id of a row banned: all are candidates, as argmax of all -inf gives 0
            exact.masked_fill_(banned[rows, cols], float("-inf"))
        top = torch.full((B,), float("-inf"), dtype=exact.dtype).scatter_reduce_(0, rows, exact, "amax")
        ids = torch.where(exact == top.index_select(0, rows), cols, V)  # the best candidates' ids, else V
        picks = torch.full((B,), V, dtype=torch.long).scatter_reduce_(0, rows, ids, "amin")
        if bool((picks == V).any()):  # a NaN or inf: some row without a candidate
            return None
        return picks

    @staticmethod
    def _projections(model: Any) -> list[Any]:
        out = []
        for layer in model.decoder.layers:
            attn, ffn = layer.self_attn, layer.ffn
            out += [attn.q_proj, attn.k_proj, attn.v_proj, attn.output_proj, ffn.gate_proj, ffn.inner_proj, ffn.output_proj]
        return out + [model.final_proj]

    @classmethod
    def supported(cls, model: Any) -> bool:
        """Whether ``model`` (accepted by :func:`check_supported`) gets packed weights: CPU,
        float32, bias-free projections, the GLU feed-forward of fairseq2 0.8 with SiLU, no
        sparsity, not training, under :attr:`MAX_BYTES`, and a build with oneDNN."""
        from fairseq2.models.transformer import GLUFeedForwardNetwork

        if _onednn_linear_ops() is None or model.training:
            return False
        try:
            projections = cls._projections(model)
            ffns = [layer.ffn for layer in model.decoder.layers]
        except AttributeError:
            return False
        if any(type(f) is not GLUFeedForwardNetwork or getattr(f, "activation_sparsity", 0.0)
               or not isinstance(f.gate_activation, torch.nn.SiLU) for f in ffns):
            return False
        weights = [p.weight for p in projections]
        if any(getattr(p, "bias", None) is not None for p in projections):
            return False
        if any(w.device.type != "cpu" or w.dtype != torch.float32 or w.dim() != 2 for w in weights):
            return False
        return sum(w.numel() * w.element_size() for w in weights) <= cls.MAX_BYTES

    @classmethod
    def of(cls, model: Any) -> PackedWeights | None:
        """The packed weights of ``model`` (cached; repacked when a weight was replaced or
        modified in place), or None where :meth:`supported` says no or the check fails."""
        if not cls.supported(model):
            _PACKED.pop(model, None)
            return None
        key = tuple((p.weight.data_ptr(), _version(p.weight)) for p in cls._projections(model))
        hit = _PACKED.get(model)
        if hit is not None and hit[0] == key:
            return hit[1]
        ops = _onednn_linear_ops()
        assert ops is not None
        try:
            packed = cls(model, *ops)
            x = torch.randn(3, model.final_proj.weight.size(1), generator=torch.Generator().manual_seed(0))
            got, want = packed.linear(x, packed.final), torch.nn.functional.linear(x, model.final_proj.weight)
            ok = bool(torch.allclose(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max())))
        except RuntimeError:
            ok = False
        _PACKED[model] = (key, packed if ok else None)
        return packed if ok else None


def _version(t: Tensor) -> int:
    """``t``'s in-place modification counter (-1 for an inference tensor, which has none)."""
    try:
        return t._version
    except RuntimeError:
        return -1


_PACKED: weakref.WeakKeyDictionary[Any, tuple[tuple[tuple[int, int], ...], PackedWeights | None]] = weakref.WeakKeyDictionary()


class LlamaDecoder:
    """Runs a fairseq2 LLaMA ``TransformerLM`` on left-padded batches with a static KV cache.

    The cache holds ``k``/``v`` per layer, ``[B, H_kv, capacity, head_dim]``, allocated once by
    :meth:`prefill` (row ``b``'s prompt in its last ``lengths[b]`` of the first ``W`` columns, so
    every row's next token lands in the same column); :meth:`step` writes one column per call and
    attends to the filled columns only; finished rows are dropped (:meth:`keep`, a copy only when
    a row ends). :meth:`extend` runs a block of several tokens per row after the cached prefix
    (scoring continuations).

    :meth:`prefill` runs the prompts' real tokens only, packed into one sequence (no pad columns
    through the projections), and each prompt's causal attention on its own.
    """

    def __init__(self, model: Any) -> None:
        check_supported(model)
        self.model = model
        self.layers = list(model.decoder.layers)
        self.final_norm = getattr(model.decoder, "layer_norm", None)
        attn0 = self.layers[0].self_attn
        freqs = torch.view_as_complex(attn0.pos_encoder.freqs.float())  # [max_seq_len + 1, E / 2]; row 0: pad
        self.freqs = freqs
        self.packed = PackedWeights.of(model)  # None: the modules' own projections for every product
        self.k: list[Tensor] = []
        self.v: list[Tensor] = []
        self.key_valid: Tensor | None = None  # [B, capacity] bool
        self.key_bias: Tensor | None = None  # [B, 1, 1, capacity]: -inf in pad columns, else 0
        self.padded = False  # whether any key column is masked (else attention needs no mask)

    # -- cache ---------------------------------------------------------------------------------

    def _allocate(self, batch: int, capacity: int, device: torch.device) -> None:
        dtype = self.model.final_proj.weight.dtype
        self.k, self.v = [], []
        for layer in self.layers:
            attn = layer.self_attn
            shape = (batch, attn.num_key_value_heads, capacity, attn.head_dim)
            self.k.append(torch.empty(shape, dtype=dtype, device=device))
            self.v.append(torch.empty(shape, dtype=dtype, device=device))

    def keep(self, rows: Tensor) -> None:
        """Keeps only ``rows`` (indices into the current batch) in the cache."""
        assert self.key_valid is not None and self.key_bias is not None
        self.key_valid = self.key_valid[rows]
        self.key_bias = self.key_bias[rows]
        self.k = [k[rows] for k in self.k]
        self.v = [v[rows] for v in self.v]

    # -- forward -------------------------------------------------------------------------------

    def prefill(self, ids: Tensor, lengths: Sequence[int], capacity: int) -> Tensor:
        """Runs left-padded prompts ``ids`` ``[B, W]`` (row ``b`` real in its last ``lengths[b]``
        columns) into a new cache of ``capacity`` columns; returns each row's last logits ``[B, V]``.

        The ``T = sum(lengths)`` real tokens go through the layers as one packed sequence
        ``[1, T, M]``; attention runs per prompt (causal, over its own keys), and the keys and
        values land in the cache's left-padded columns (pad columns hold zeros, masked out).
        """
        B, W = ids.shape
        device = ids.device
        lens = torch.tensor(list(lengths), device=device)
        positions = torch.arange(W, device=device).unsqueeze(0) - (W - lens).unsqueeze(1)  # [B, W]; < 0 in pad columns
        real = positions >= 0
        self.key_valid = torch.zeros(B, capacity, dtype=torch.bool, device=device)
        self.key_valid[:, :W] = real
        self.padded = min(lengths) < W
        dtype = self.model.final_proj.weight.dtype
        self.key_bias = torch.zeros(B, 1, 1, capacity, dtype=dtype, device=device)
        self.key_bias[:, 0, 0, :W].masked_fill_(~real, float("-inf"))
        self._allocate(B, capacity, device)
        if self.padded:
            for k, v in zip(self.k, self.v):  # pad columns are read (weight 0): no garbage, which could be NaN
                k[:, :, :W].zero_()
                v[:, :, :W].zero_()
        rows, cols = real.nonzero(as_tuple=True)  # [T] each, row-major: each prompt's tokens in order
        bounds = [0, *torch.tensor(list(lengths)).cumsum(0).tolist()]
        spans = list(zip(bounds[:-1], bounds[1:]))

        def attend(i: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:  # q [1, T, H, D], k/v [1, T, H_kv, D]
            self.k[i][rows, :, cols] = k[0]
            self.v[i][rows, :, cols] = v[0]
            g = q.size(2) // k.size(2)
            out = torch.empty_like(q)
            for s, e in spans:
                qs, ks, vs = (x[0, s:e].transpose(0, 1).unsqueeze(0) for x in (q, k, v))  # [1, H, L, D]
                if g > 1:  # grouped-query attention: kv head j serves heads j*g … j*g+g-1
                    ks, vs = ks.repeat_interleave(g, dim=1), vs.repeat_interleave(g, dim=1)
                out[0, s:e] = scaled_dot_product_attention(qs, ks, vs, is_causal=True)[0].transpose(0, 1)
            return out.flatten(-2)

        hidden = self._layers(ids[rows, cols].unsqueeze(0), positions[rows, cols].unsqueeze(0), attend)
        return self.logits(hidden[0, torch.tensor(bounds[1:], device=device) - 1])

    def step(self, ids: Tensor, positions: Tensor, column: int) -> Tensor:
        """Feeds one token per row (``ids``, ``positions`` ``[B]``), cached at ``column``; returns
        logits ``[B, V]``. Attention reads the cache's columns ``0 … column`` only."""
        return self.logits(self._step_hidden(ids, positions, column))

    def _step_hidden(self, ids: Tensor, positions: Tensor, column: int) -> Tensor:
        """:meth:`step`'s hidden states ``[B, M]`` before the final norm."""
        assert self.key_valid is not None and self.key_bias is not None
        self.key_valid[:, column] = True
        end = column + 1
        bias = self.key_bias[..., :end] if self.padded else None  # [B, 1, 1, end]

        def attend(i: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:  # q [B, 1, H, D], k/v [B, 1, H_kv, D]
            self.k[i][:, :, column] = k[:, 0]
            self.v[i][:, :, column] = v[:, 0]
            keys, values = self.k[i][:, :, :end], self.v[i][:, :, :end]  # [B, H_kv, end, D]
            B, _, H_kv, D = k.shape
            # one query per row: fold the g query heads sharing a kv head into g query
            # positions of that head (no copy of the cache, unlike repeat_interleave)
            qg = q.view(B, H_kv, -1, D)
            if bias is None:
                o = scaled_dot_product_attention(qg, keys, values)  # [B, H_kv, g, D]
            else:
                # with a mask, CPU SDPA's flash kernel costs ~2x two batched matmuls and a softmax
                scores = torch.matmul(qg, keys.transpose(-1, -2)).mul_(1 / math.sqrt(D)).add_(bias)
                o = torch.matmul(scores.softmax(-1), values)
            return o.reshape(B, 1, -1)

        return self._layers(ids.unsqueeze(1), positions.unsqueeze(1), attend)[:, -1]

    def extend(self, ids: Tensor, positions: Tensor, column: int) -> Tensor:
        """Runs right-padded blocks ``ids`` ``[B, L]`` at ``positions`` ``[B, L]`` after the cached
        columns ``< column``; returns the final-normed hidden states ``[B, L, M]``. A padded tail
        is never attended by the real tokens before it (causal)."""
        assert self.key_valid is not None
        L = ids.size(1)
        end = column + L
        device = ids.device
        causal = torch.ones(L, L, dtype=torch.bool, device=device).tril()
        prefix = self.key_valid[:, None, :column].expand(-1, L, -1)
        mask = torch.cat([prefix, causal.expand(ids.size(0), -1, -1)], dim=2).unsqueeze(1)  # [B, 1, L, end]
        self.key_valid[:, column:end] = True

        def attend(i: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:  # q [B, L, H, D], k/v [B, L, H_kv, D]
            self.k[i][:, :, column:end] = k.transpose(1, 2)
            self.v[i][:, :, column:end] = v.transpose(1, 2)
            keys, values = self.k[i][:, :, :end], self.v[i][:, :, :end]
            g = q.size(2) // k.size(2)
            if g > 1:
                keys, values = keys.repeat_interleave(g, dim=1), values.repeat_interleave(g, dim=1)
            o = scaled_dot_product_attention(q.transpose(1, 2), keys, values, attn_mask=mask)
            return o.transpose(1, 2).flatten(-2)

        hidden = self._layers(ids, positions, attend)
        return self.final_norm(hidden) if self.final_norm is not None else hidden

    def step_greedy(self, ids: Tensor, positions: Tensor, column: int, banned: Tensor | None) -> Tensor:
        """:meth:`step` followed by the greedy pick: ids ``[B]`` (the arg-max of the logits, lowest id on
        ties, ``banned`` ``[B, V]`` ids excluded), screened in bf16 with an exact fp32 re-check
        (:meth:`PackedWeights.greedy`) where packed weights exist, else from the fp32 logits."""
        hidden = self._step_hidden(ids, positions, column)
        if self.final_norm is not None:
            hidden = self.final_norm(hidden)
        picks = self.packed.greedy(hidden, banned) if self.packed is not None else None
        if picks is not None:
            return picks
        logits = self._output(hidden)
        if banned is not None:
            logits.masked_fill_(banned, float("-inf"))
        return torch.argmax(logits, dim=-1)

    def logits(self, hidden: Tensor) -> Tensor:
        """Output logits of hidden states ``[..., M]`` taken before the final norm."""
        return self._output(self.final_norm(hidden) if self.final_norm is not None else hidden)

    def _output(self, normed: Tensor) -> Tensor:
        """The output projection of final-normed hidden states ``[..., M]``: logits ``[..., V]``."""
        if self.packed is not None and normed.numel() > normed.size(-1):
            return self.packed.linear(normed, self.packed.final)
        return self.model.final_proj(normed)

    @staticmethod
    def _rope(x: Tensor, freqs: Tensor) -> Tensor:
        """``x`` ``[B, S, H, D]`` rotated by the complex factors ``freqs`` ``[B, S, D / 2]``
        (fairseq2's pairing: (0,1), (2,3), …)."""
        xc = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
        return torch.view_as_real(xc * freqs.unsqueeze(2)).flatten(-2).type_as(x)

    def _layers(self, ids: Tensor, positions: Tensor, attend: Callable[[int, Tensor, Tensor, Tensor], Tensor]) -> Tensor:
        """The decoder stack on ``ids`` ``[B, S]`` at RoPE ``positions`` ``[B, S]``; returns the
        hidden states ``[B, S, M]`` before the final norm.

        ``attend(i, q, k, v)`` is layer ``i``'s attention: it gets the rotated queries ``[B, S, H, D]``
        and keys and the values ``[B, S, H_kv, D]``, stores the keys and values in the cache and
        returns the attention output ``[B, S, H·D]``.
        """
        B, S = ids.shape
        packed = self.packed if self.packed is not None and B * S > 1 else None
        x, _ = self.model.decoder_frontend(ids, BatchLayout.of(ids))
        freqs = self.freqs[positions + 1]  # [B, S, D / 2], once for all layers; row 0 of the table is fairseq2's pad entry
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            D = attn.head_dim
            h = layer.self_attn_layer_norm(x)
            if packed is not None:
                w = packed.layers[i]
                nq, nk, _ = w["qkv_split"]
                qkv = packed.linear(h, w["qkv"])
                qk = self._rope(qkv[..., : nq + nk].unflatten(-1, (-1, D)), freqs)  # q and k heads in one product
                q, k = qk.split([nq // D, nk // D], dim=2)
                v = qkv[..., nq + nk :].unflatten(-1, (-1, D))
            else:
                q = self._rope(attn.q_proj(h).unflatten(-1, (-1, D)), freqs)
                k = self._rope(attn.k_proj(h).unflatten(-1, (-1, D)), freqs)
                v = attn.v_proj(h).unflatten(-1, (-1, D))
            o = attend(i, q, k, v)
            if packed is not None:
                x = x + packed.linear(o, w["o"])
                gate, inner = packed.linear(layer.ffn_layer_norm(x), w["glu"]).split(w["glu_split"], dim=-1)
                x = x + packed.linear(torch.nn.functional.silu(gate) * inner, w["down"])
            else:
                x = x + attn.output_proj(o)
                x = x + layer.ffn(layer.ffn_layer_norm(x))
        return x
