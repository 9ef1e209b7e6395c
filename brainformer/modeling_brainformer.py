"""Brainformer: EEG `(batch, time, n_eeg)` → MEG `(batch, time, n_meg)`.

Read top-down: embeddings and attention blocks → Two-Stage Attention → encoder / decoder layers →
encoder / decoder → output dataclasses → `BrainformerPreTrainedModel` → trunk → task models.

Tokens are laid out segment-major, `(batch, segments, channels, d_model)`: the channel stage, the
router and the cross-attention all work per segment, so they see `(batch, segments)` as leading
dimensions without copies; only the time stage looks at the transposed view.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers.utils import ModelOutput

from brainformer.configuration_brainformer import BrainformerConfig

try:  # transformers >= 5: these skip tensors already loaded from a checkpoint.
    from transformers import initialization as _init
except ImportError:  # pragma: no cover - transformers 4.x
    _init = nn.init

__all__ = [
    "BrainformerForMEGPrediction",
    "BrainformerForMEGTokens",
    "BrainformerMEGPredictionOutput",
    "BrainformerMEGTokensOutput",
    "BrainformerModel",
    "BrainformerModelOutput",
    "BrainformerPreTrainedModel",
]


# ---------------------------------------------------------------------------------------------
# Embeddings
# ---------------------------------------------------------------------------------------------


def sinusoidal_position_table(n_positions: int, d_model: int) -> torch.Tensor:
    """Fixed sine/cosine table `(n_positions, d_model)` (Vaswani et al.); odd widths are allowed."""
    position = torch.arange(n_positions, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(n_positions, d_model)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency[: d_model // 2])
    return table


class BrainformerSegmentPositionEmbedding(nn.Module):
    """Segment position embedding `(segments, d_model)`, learned or sinusoidal."""

    def __init__(self, config: BrainformerConfig):
        super().__init__()
        self.kind = config.position_embedding
        shape = (config.n_segments, config.d_model)
        if self.kind == "learned":
            self.weight = nn.Parameter(torch.zeros(shape))
        else:
            # Not persistent: the table is a function of the config, not something to store.
            self.register_buffer("weight", sinusoidal_position_table(*shape), persistent=False)

    def forward(self) -> torch.Tensor:
        return self.weight


class BrainformerDSWEmbedding(nn.Module):
    """Dimension-Segment-Wise embedding: each channel's window is cut into `patch_len`-sample
    segments and each segment is embedded linearly, plus a channel and a segment position embedding.

    `(batch, time, channels)` → `(batch, segments, channels, d_model)`.
    """

    def __init__(self, config: BrainformerConfig, n_channels: int):
        super().__init__()
        self.patch_len = config.patch_len
        self.n_segments = config.n_segments
        self.value_embedding = nn.Linear(config.patch_len, config.d_model)
        self.channel_embedding = nn.Parameter(torch.zeros(n_channels, config.d_model))
        self.position_embedding = BrainformerSegmentPositionEmbedding(config)
        self.envelope_embedding = nn.Linear(config.envelope_filters, config.d_model) if config.envelope_filters else None
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, values: torch.Tensor, envelope: torch.Tensor | None = None) -> torch.Tensor:
        """`envelope`: `(batch, segments, envelope_filters)` amplitude features, added to every
        channel's token of the segment (with `config.envelope_filters`)."""
        batch, _, channels = values.shape
        # (batch, segments, patch_len, channels) -> (batch, segments, channels, patch_len)
        segments = values.reshape(batch, self.n_segments, self.patch_len, channels).transpose(2, 3)
        # Contiguous (eager copies it anyway): a linear layer on a transposed view is exported
        # (torch.export) as a batched product with the weight broadcast, several times slower
        # under AOTInductor than the one matrix product it is.
        tokens = self.value_embedding(segments.contiguous())  # (batch, segments, channels, d_model)
        tokens = tokens + self.channel_embedding + self.position_embedding()[:, None, :]
        if self.envelope_embedding is not None:
            tokens = tokens + self.envelope_embedding(envelope)[:, :, None, :]
        return self.dropout(tokens)


# ---------------------------------------------------------------------------------------------
# Linear filters of the EEG: the skip path, the gain head's filters, the envelope features
# ---------------------------------------------------------------------------------------------


def _lagged_inputs(values: torch.Tensor, past: int, future: int, n_out: int) -> torch.Tensor:
    """`(batch, time, channels)` → `(batch, n_out, channels · (past + future))` for the newest `n_out`
    samples: row t holds, per channel, `x[t − past + 1] … x[t + future]`, zeros outside the window.

    One matrix product with these rows applies a filter bank, cheaper on the CPU than Conv1d
    (whose kernel for these shapes, slow_conv2d, costs more than the whole transformer).
    """
    batch = values.shape[0]
    padded = F.pad(values, (0, 0, past - 1, future))  # (batch, past-1+time+future, channels)
    padded = padded[:, padded.shape[1] - (n_out + past - 1 + future):]  # what the newest n_out outputs see
    return padded.unfold(1, past + future, 1).reshape(batch, n_out, -1)  # (batch, n_out, channels*taps)


class BrainformerEnvelopeFeatures(nn.Module):
    """Learned amplitude features: `envelope_filters` causal filters of the EEG, each a spatial
    filter followed by a pair of temporal ones (`envelope_filter_samples` taps), the pair's
    squared outputs summed, averaged over each segment and taken in log.

    `(batch, time, n_eeg)` → `(batch, segments, envelope_filters)`. The LayerNorms of the trunk see
    every token at unit scale; these features tell it how strong a rhythm is. A pair in
    quadrature (a band-pass and its Hilbert transform) gives the band's squared envelope, which
    is smooth, where one band-passed output squared swings with the rhythm's phase at twice its
    frequency: a 16-sample segment holds a quarter of an alpha cycle. Separable, so the features
    of a whole window cost about as little as one token layer.
    """

    def __init__(self, config: BrainformerConfig):
        super().__init__()
        self.taps = config.envelope_filter_samples
        self.n_segments = config.n_segments
        self.spatial = nn.Parameter(torch.zeros(config.envelope_filters, config.n_eeg_channels))
        # (filters, taps): tap `taps - 1 - k` multiplies the spatially filtered input k samples in the past.
        # (filters, 2, taps): the pair of temporal filters of each feature.
        self.temporal = nn.Parameter(torch.zeros(config.envelope_filters, 2, self.taps))

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        batch, time, _ = values.shape
        projected = F.linear(values, self.spatial)  # (batch, time, filters)
        lagged = _lagged_inputs(projected, self.taps, 0, time).unflatten(-1, (-1, 1, self.taps))  # (batch, time, filters, 1, taps)
        filtered = (lagged * self.temporal).sum(-1)  # (batch, time, filters, 2)
        power = filtered.square().sum(-1).reshape(batch, self.n_segments, time // self.n_segments, -1).mean(2)
        return torch.log(power + ENVELOPE_POWER_FLOOR)  # (batch, segments, filters)


class BrainformerHopLookahead(nn.Module):
    """The linear path's use of the served hop's own future: output sample `t`, `j` samples before
    the newest one of its hop, gets `Σ x[t − past + 1 … t + j] · weight_j + bias_j`, a linear map
    of its own per position `j` (0 … hop − 1) on its `j` future samples in the hop and its newest
    `past` samples.

    A window is served when its newest sample has arrived, so its hop's older samples are
    published with some of their own future in hand: the best linear filter using it gains up to
    the simulator's `hop_limit` over a causal one, at no extra delay. The maps are fitted in closed
    form to what the causal skip path leaves (`training.init_hop_lookahead`), and frozen with it.
    Positions count back from the window's newest sample, so a training window and a served one
    agree: every hop of a window ends at a multiple of `hop_samples` before its end. With
    `config.hop_lookahead_rank` the maps share one output basis (`basis`, `n_meg × rank`) and each
    position's map gives coordinates on it: the reduced-rank ridge of the full maps.

    EEG `(batch, time, n_eeg)` → `(batch, n_out, n_meg)` for the newest `n_out` samples.
    """

    def __init__(self, config: BrainformerConfig):
        super().__init__()
        self.past = config.hop_lookahead_past_samples
        self.hop = config.hop_samples
        rank = config.hop_lookahead_rank
        # weight_j: (outputs, n_eeg · (past + j)), per EEG channel its taps t − past + 1 … t + j;
        # its outputs are the MEG channels, or with a rank the coordinates on `basis`.
        outputs = rank or config.n_meg_channels
        self.weights = nn.ParameterList(
            nn.Parameter(torch.zeros(outputs, config.n_eeg_channels * (self.past + j))) for j in range(self.hop)
        )
        # (n_meg, rank): one output basis for every position. The full maps are 4.6 million
        # weights for 306 MEG × 60 EEG channels, read on every hop.
        self.basis = nn.Parameter(torch.zeros(config.n_meg_channels, rank)) if rank else None
        self.bias = nn.Parameter(torch.zeros(self.hop, config.n_meg_channels))

    def forward(self, input_values: torch.Tensor, n_out: int) -> torch.Tensor:
        batch, _, n_eeg = input_values.shape
        taps = self.past + self.hop - 1
        lagged = _lagged_inputs(input_values, self.past, self.hop - 1, n_out).unflatten(-1, (n_eeg, taps))
        out = input_values.new_zeros(batch, n_out, self.weights[0].shape[0])
        for j, weight in enumerate(self.weights):
            # Rows j samples before their hop's newest one: n_out − 1 − j, then every hop before it.
            first = (n_out - 1 - j) % self.hop
            features = lagged[:, first::self.hop, :, : self.past + j].flatten(2)
            out[:, first::self.hop] = F.linear(features, weight)
        if self.basis is not None:
            out = F.linear(out, self.basis)
        # Row i of the output is (n_out − 1 − i) mod hop samples before its hop's newest one.
        position = (n_out - 1 - torch.arange(n_out, device=out.device)) % self.hop
        return out + self.bias[position]


#: Added to the envelope features' power before the log (scaled units²): a silent input stays finite.
ENVELOPE_POWER_FLOOR = 1e-6


# ---------------------------------------------------------------------------------------------
# Attention and feed-forward blocks
# ---------------------------------------------------------------------------------------------


def _split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """`(..., L, d_model)` → `(problems, n_heads, L, head_dim)`.

    The fused SDPA kernels (CPU flash, CUDA) take 4-D inputs only; anything else falls back to the
    much slower math path, so the leading dimensions are flattened into one.
    """
    return x.reshape(-1, x.shape[-2], n_heads, x.shape[-1] // n_heads).transpose(1, 2)


def _merge_heads(attended: torch.Tensor, leading_shape: torch.Size) -> torch.Tensor:
    """`(problems, n_heads, L, head_dim)` → `(*leading_shape, L, d_model)`."""
    return attended.transpose(1, 2).reshape(*leading_shape, attended.shape[2], -1)


#: Under a compiler, attention over at most this many keys is written out (see `_attention`).
WRITTEN_OUT_MAX_KEYS = 8


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float, is_causal: bool = False) -> torch.Tensor:
    """`(problems, heads, L_q, head_dim)` queries over `(problems, heads, L_k, head_dim)` keys/values.

    `F.scaled_dot_product_attention`, except under `torch.compile` / `torch.export` for a few keys
    (the time stage over a window's segments, the router): there the CPU flash kernel pays a fixed
    cost per (problem, head), thousands of them for a handful of keys each, while the same
    arithmetic written out as broadcasts and sums becomes one fused loop (a batch of 8 windows of
    the default model: ~1.5 ms of 7 on the CPU). Eager keeps SDPA, which is faster there.
    """
    if (k.shape[-2] <= WRITTEN_OUT_MAX_KEYS and dropout_p == 0.0 and not is_causal
            and (torch.compiler.is_compiling() or torch.compiler.is_exporting())):
        scores = (q.unsqueeze(-2) * k.unsqueeze(-3)).sum(-1) * q.shape[-1] ** -0.5  # (..., L_q, L_k)
        return (scores.softmax(-1).unsqueeze(-1) * v.unsqueeze(-3)).sum(-2)
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=is_causal)


class BrainformerSelfAttention(nn.Module):
    """Multi-head self-attention over the second-to-last dimension, any leading dimensions:
    `(..., L, d_model)` → `(..., L, d_model)`. One fused q/k/v projection."""

    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.dropout = dropout
        self.qkv_proj = nn.Linear(d_model, 3 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, is_causal: bool = False, last_queries: int | None = None) -> torch.Tensor:
        """`last_queries`: only the newest `last_queries` positions ask (all positions still answer),
        giving `(..., last_queries, d_model)`; what a streaming server needs from the last layer."""
        length, d_model = x.shape[-2:]
        # (..., L, 3*d_model) -> 3 x (problems, n_heads, L, head_dim) as views, no copies.
        qkv = self.qkv_proj(x).reshape(-1, length, 3, self.n_heads, d_model // self.n_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        if last_queries is not None:
            if is_causal:  # SDPA aligns its causal mask top-left, which is wrong for a query suffix.
                raise ValueError("last_queries is only supported without a causal mask")
            q = q[:, :, length - last_queries:]
        attended = _attention(q, k, v, self.dropout if self.training else 0.0, is_causal)
        return self.out_proj(_merge_heads(attended, x.shape[:-2]))


class BrainformerCrossAttention(nn.Module):
    """Multi-head attention of `query (..., L_q, d_model)` over `key_value (..., L_k, d_model)`
    (matching leading dimensions: the independent attention problems) → `(..., L_q, d_model)`."""

    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(d_model, d_model)
        self.kv_proj = nn.Linear(d_model, 2 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, query: torch.Tensor, key_value: torch.Tensor) -> torch.Tensor:
        length, d_model = key_value.shape[-2:]
        kv = self.kv_proj(key_value).reshape(-1, length, 2, self.n_heads, d_model // self.n_heads)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # 2 x (problems, n_heads, L_k, head_dim)
        attended = _attention(_split_heads(self.q_proj(query), self.n_heads), k, v,
                              self.dropout if self.training else 0.0)
        return self.out_proj(_merge_heads(attended, query.shape[:-2]))


class BrainformerFeedForward(nn.Module):
    """Position-wise MLP `(..., d_model)` → `(..., d_model)`."""

    def __init__(self, config: BrainformerConfig):
        super().__init__()
        self.fc_in = nn.Linear(config.d_model, config.d_ff)
        self.fc_out = nn.Linear(config.d_ff, config.d_model)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(self.dropout(F.gelu(self.fc_in(x))))


class BrainformerTwoStageAttention(nn.Module):
    """Crossformer's Two-Stage Attention on `(batch, segments, channels, d_model)`, Pre-LN.

    Time stage: self-attention across segments within each channel (causal for the tokens head, so
    segment s only sees segments ≤ s). Channel stage: `router_dim` learned router vectors per
    segment gather from all channels, then every channel reads back from the router; this costs
    O(channels · router_dim) instead of O(channels²).
    """

    def __init__(self, config: BrainformerConfig, causal: bool):
        super().__init__()
        self.causal = causal
        self.time_norm = nn.LayerNorm(config.d_model)
        self.time_attention = BrainformerSelfAttention(config.d_model, config.n_heads, config.dropout)
        self.router = nn.Parameter(torch.zeros(config.n_segments, config.router_dim, config.d_model))
        self.channel_norm = nn.LayerNorm(config.d_model)
        self.router_gather = BrainformerCrossAttention(config.d_model, config.n_heads, config.dropout)
        self.router_scatter = BrainformerCrossAttention(config.d_model, config.n_heads, config.dropout)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, last_segments: int | None = None) -> torch.Tensor:
        """`last_segments`: return only the newest segments `(batch, last_segments, channels, d_model)`;
        the time stage still reads every segment."""
        # Time stage on the (batch, channels, segments, d_model) view, made contiguous for the
        # reason given in BrainformerDSWEmbedding.forward.
        attended = self.time_attention(self.time_norm(x).transpose(1, 2).contiguous(), is_causal=self.causal,
                                       last_queries=last_segments)
        router = self.router
        if last_segments is not None:
            x = x[:, x.shape[1] - last_segments:]
            router = router[router.shape[0] - last_segments:]
        x = x + self.dropout(attended.transpose(1, 2))

        # Channel stage, per segment: (batch, segments, router_dim | channels, d_model).
        normed = self.channel_norm(x)
        router = router.expand(x.shape[0], -1, -1, -1)
        buffer = self.router_gather(router, normed)  # (batch, segments, router_dim, d_model)
        return x + self.dropout(self.router_scatter(normed, buffer))


# ---------------------------------------------------------------------------------------------
# Encoder and decoder
# ---------------------------------------------------------------------------------------------


class BrainformerEncoderLayer(nn.Module):
    """TSA + feed-forward, Pre-LN: `(batch, segments, n_eeg, d_model)` → same shape."""

    def __init__(self, config: BrainformerConfig):
        super().__init__()
        self.two_stage_attention = BrainformerTwoStageAttention(config, causal=False)
        self.ffn_norm = nn.LayerNorm(config.d_model)
        self.ffn = BrainformerFeedForward(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.two_stage_attention(x)
        return x + self.dropout(self.ffn(self.ffn_norm(x)))


class BrainformerDecoderLayer(nn.Module):
    """Cross-attention to the EEG tokens of the same segment, TSA over the MEG tokens, feed-forward.

    `meg (batch, segments, n_meg, d_model)`, `eeg (batch, segments, n_eeg, d_model)` → like `meg`.
    Each MEG token at segment s attends the n_eeg encoder tokens of segment s only: the encoder's
    time stage already carries temporal context into them, and the cost stays
    O(segments · n_meg · n_eeg). Cross-attention comes first because the decoder's input is
    (for the regression head) a learned constant per channel and segment: a TSA in front of it
    would only transform constants, while after it the TSA mixes EEG-derived information across
    time and across MEG channels.
    """

    def __init__(self, config: BrainformerConfig, causal: bool):
        super().__init__()
        self.cross_norm = nn.LayerNorm(config.d_model)
        self.cross_attention = BrainformerCrossAttention(config.d_model, config.n_heads, config.dropout)
        self.two_stage_attention = BrainformerTwoStageAttention(config, causal=causal)
        self.ffn_norm = nn.LayerNorm(config.d_model)
        self.ffn = BrainformerFeedForward(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, meg: torch.Tensor, eeg: torch.Tensor, last_segments: int | None = None) -> torch.Tensor:
        """`last_segments`: compute the output of the newest segments only (see the decoder)."""
        meg = meg + self.dropout(self.cross_attention(self.cross_norm(meg), eeg))
        meg = self.two_stage_attention(meg, last_segments)
        return meg + self.dropout(self.ffn(self.ffn_norm(meg)))


class BrainformerEncoder(nn.Module):
    """EEG `(batch, time, n_eeg)` → EEG tokens `(batch, segments, n_eeg, d_model)`."""

    def __init__(self, config: BrainformerConfig):
        super().__init__()
        self.embedding = BrainformerDSWEmbedding(config, config.n_eeg_channels)
        self.layers = nn.ModuleList(BrainformerEncoderLayer(config) for _ in range(config.n_layers))
        self.final_norm = nn.LayerNorm(config.d_model) if config.final_norm else nn.Identity()

    def forward(self, input_values: torch.Tensor, envelope: torch.Tensor | None = None) -> torch.Tensor:
        x = self.embedding(input_values, envelope)
        for layer in self.layers:
            x = layer(x)
        return self.final_norm(x)


class BrainformerDecoder(nn.Module):
    """MEG tokens `(batch, segments, n_meg, d_model)` from the EEG tokens.

    Its input is one learned query per MEG channel plus the segment position, optionally plus
    `inputs_embeds (batch, segments, n_meg, d_model)` (the embedded previous-segment tokens of the
    tokens head) and the segment's embedded amplitude features (`config.envelope_filters`). The
    time stage is causal when `causal` (tokens head).
    """

    def __init__(self, config: BrainformerConfig, causal: bool):
        super().__init__()
        self.channel_queries = nn.Parameter(torch.zeros(config.n_meg_channels, config.d_model))
        self.position_embedding = BrainformerSegmentPositionEmbedding(config)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(BrainformerDecoderLayer(config, causal) for _ in range(config.n_layers))
        self.envelope_embedding = nn.Linear(config.envelope_filters, config.d_model) if config.envelope_filters else None
        self.final_norm = nn.LayerNorm(config.d_model) if config.final_norm else nn.Identity()

    def forward(self, encoder_states: torch.Tensor, inputs_embeds: torch.Tensor | None = None,
                last_segments: int | None = None, envelope: torch.Tensor | None = None) -> torch.Tensor:
        """`last_segments`: return `(batch, last_segments, n_meg, d_model)`, the newest segments only.
        Every layer but the last needs all segments (the next time stage reads them); the last one
        computes its queries, channel stage and feed-forward for the newest segments only, which
        is all a streaming server publishes."""
        queries = self.channel_queries + self.position_embedding()[:, None, :]  # (segments, n_meg, d_model)
        if inputs_embeds is None:
            x = queries.expand(encoder_states.shape[0], -1, -1, -1)
        else:
            x = inputs_embeds + queries
        if self.envelope_embedding is not None:
            x = x + self.envelope_embedding(envelope)[:, :, None, :]  # (batch, segments, n_meg, d_model)
        x = self.dropout(x)
        for index, layer in enumerate(self.layers):
            x = layer(x, encoder_states, last_segments if index == len(self.layers) - 1 else None)
        return self.final_norm(x)


# ---------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------


@dataclass
class BrainformerModelOutput(ModelOutput):
    """Trunk output.

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(batch, segments, n_meg, d_model)`):
            Decoder tokens, one per MEG channel and segment.
        encoder_last_hidden_state (`torch.FloatTensor` of shape `(batch, segments, n_eeg, d_model)`):
            Encoder tokens, one per EEG channel and segment.
    """

    last_hidden_state: torch.FloatTensor | None = None
    encoder_last_hidden_state: torch.FloatTensor | None = None


@dataclass
class BrainformerMEGPredictionOutput(ModelOutput):
    """Regression output.

    Args:
        loss (`torch.FloatTensor` of shape `()`, returned when `labels` are given):
            MSE or Huber loss (per `config.loss`) in scaled units.
        predictions (`torch.FloatTensor` of shape `(batch, time, n_meg)`):
            Predicted MEG in scaled units.
    """

    loss: torch.FloatTensor | None = None
    predictions: torch.FloatTensor | None = None


@dataclass
class BrainformerMEGTokensOutput(ModelOutput):
    """Tokens output.

    Args:
        loss (`torch.FloatTensor` of shape `()`, returned when `labels` are given):
            Cross-entropy over the token vocabulary, pad positions ignored.
        logits (`torch.FloatTensor` of shape `(batch, time, n_meg, vocab_size)`):
            Next-token logits, teacher-forced on `labels`.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None


# ---------------------------------------------------------------------------------------------
# Pre-trained model base
# ---------------------------------------------------------------------------------------------


class BrainformerPreTrainedModel(PreTrainedModel):
    config_class = BrainformerConfig
    base_model_prefix = "brainformer"
    main_input_name = "input_values"
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = 0.02
        if isinstance(module, nn.Linear):
            _init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                _init.zeros_(module.bias)
        elif isinstance(module, nn.Conv1d):
            # The lagged-linear skip starts switched off; training may set it from a ridge fit.
            _init.zeros_(module.weight)
            if module.bias is not None:
                _init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            _init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            _init.ones_(module.weight)
            _init.zeros_(module.bias)
        elif isinstance(module, BrainformerSegmentPositionEmbedding):
            if module.kind == "learned":
                _init.normal_(module.weight, mean=0.0, std=std)
            else:
                # Non-persistent buffers are not in the checkpoint and must be rebuilt on load.
                _init.copy_(module.weight, sinusoidal_position_table(*module.weight.shape))
        elif isinstance(module, BrainformerDSWEmbedding):
            _init.normal_(module.channel_embedding, mean=0.0, std=std)
        elif isinstance(module, BrainformerTwoStageAttention):
            _init.normal_(module.router, mean=0.0, std=std)
        elif isinstance(module, BrainformerDecoder):
            _init.normal_(module.channel_queries, mean=0.0, std=std)
        elif isinstance(module, BrainformerEnvelopeFeatures):
            # Unit-variance outputs on unit-variance inputs, whatever the channels and taps.
            _init.normal_(module.spatial, mean=0.0, std=module.spatial.shape[1] ** -0.5)
            _init.normal_(module.temporal, mean=0.0, std=module.temporal.shape[-1] ** -0.5)
        elif isinstance(module, BrainformerHopLookahead):
            # Switched off until training fits it (with the skip path's ridge).
            for weight in module.weights:
                _init.zeros_(weight)
            _init.zeros_(module.bias)
        elif isinstance(module, BrainformerGainHead):
            # Filters start as random projections of unit scale; the gains at zero (runs after
            # the Linear branch above: `apply` visits children first), so the head adds nothing.
            # The channel scales start random, not equal: the gradient that wakes the gains sums
            # every channel's error weighted by its scale, and with equal scales the signed field
            # of one source (as many channels + as −) sums to about nothing.
            _init.normal_(module.filters, mean=0.0, std=module.filters[0].numel() ** -0.5)
            _init.zeros_(module.gain_projection.weight)
            _init.zeros_(module.gain_projection.bias)
            _init.normal_(module.channel_scale, mean=0.0, std=1.0)

    def _check_input_values(self, input_values: torch.Tensor) -> None:
        expected = (self.config.window_samples, self.config.n_eeg_channels)
        if not isinstance(input_values, torch.Tensor) or input_values.ndim != 3 or tuple(input_values.shape[1:]) != expected:
            got = tuple(input_values.shape) if isinstance(input_values, torch.Tensor) else type(input_values).__name__
            raise ValueError(
                f"input_values has shape {got}; expected (batch, window_samples={expected[0]}, "
                f"n_eeg_channels={expected[1]})"
            )
        if not input_values.is_floating_point():
            raise ValueError(f"input_values has dtype {input_values.dtype}; expected a floating-point tensor")

    def _check_labels(self, labels: torch.Tensor, input_values: torch.Tensor) -> None:
        expected = (input_values.shape[0], self.config.window_samples, self.config.n_meg_channels)
        if not isinstance(labels, torch.Tensor) or tuple(labels.shape) != expected:
            got = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
            raise ValueError(
                f"labels has shape {got}; expected (batch={expected[0]}, window_samples={expected[1]}, "
                f"n_meg_channels={expected[2]})"
            )


def _check_head(config: BrainformerConfig, head: str, cls: type) -> None:
    if config.head != head:
        raise ValueError(f"config.head = {config.head!r} but {cls.__name__} needs head={head!r}")


# ---------------------------------------------------------------------------------------------
# Trunk and task models
# ---------------------------------------------------------------------------------------------


class BrainformerModel(BrainformerPreTrainedModel):
    """Encoder + decoder trunk: EEG `(batch, time, n_eeg)` → MEG tokens `(batch, segments, n_meg, d_model)`.

    The decoder is causal over segments when `config.head == "tokens"`.
    """

    def __init__(self, config: BrainformerConfig):
        super().__init__(config)
        self.envelope = BrainformerEnvelopeFeatures(config) if config.envelope_filters else None
        self.encoder = BrainformerEncoder(config)
        self.decoder = BrainformerDecoder(config, causal=config.head == "tokens")
        self.post_init()

    def forward(
        self, input_values: torch.Tensor, decoder_inputs_embeds: torch.Tensor | None = None,
        last_segments: int | None = None,
    ) -> BrainformerModelOutput:
        """
        Args:
            input_values: EEG `(batch, window_samples, n_eeg)` in scaled units.
            decoder_inputs_embeds: optional `(batch, segments, n_meg, d_model)` added to the MEG queries.
            last_segments: decode only the newest segments (non-causal decoder only); the result
                equals the full output's `[:, -last_segments:]`.
        """
        self._check_input_values(input_values)
        if last_segments is not None and not 1 <= last_segments <= self.config.n_segments:
            raise ValueError(f"last_segments = {last_segments!r}; expected 1 … n_segments={self.config.n_segments}")
        envelope = None if self.envelope is None else self.envelope(input_values)  # (batch, segments, filters)
        encoder_states = self.encoder(input_values, envelope)
        decoder_states = self.decoder(encoder_states, decoder_inputs_embeds, last_segments, envelope)
        return BrainformerModelOutput(last_hidden_state=decoder_states, encoder_last_hidden_state=encoder_states)


def _segments_to_time(x: torch.Tensor) -> torch.Tensor:
    """`(batch, segments, channels, patch_len, *rest)` → `(batch, segments * patch_len, channels, *rest)`."""
    x = x.transpose(2, 3)
    return x.reshape(x.shape[0], x.shape[1] * x.shape[2], *x.shape[3:])


class BrainformerGainHead(nn.Module):
    """Gain × linear filter: `Σ_k scale[c, k] · gain[c, k](t) · (filter_k ∗ EEG)(t)` for MEG channel c.

    `gain_filters` learned spatio-temporal filters of the EEG (`gain_filter_past_samples` taps
    into the past, `gain_filter_lookahead_samples` into the future inside the window), weighed by
    gains the trunk reads off each MEG token, one per filter and output sample of its segment, and
    a learned per-channel scale. The term grows with the EEG's amplitude, as the field of a source
    whose strength the EEG's rhythms modulate does; a constant gain makes it a rank-`gain_filters`
    linear filter. The gain projection starts at zero: a fresh head adds nothing.

    `(batch, segments', n_meg, d_model)` tokens (the newest segments') and EEG `(batch, time,
    n_eeg)` → `(batch, n_out, n_meg)` for the newest `n_out` samples.
    """

    def __init__(self, config: BrainformerConfig):
        super().__init__()
        self.past = config.gain_filter_past_samples
        self.future = config.gain_filter_lookahead_samples
        self.patch_len = config.patch_len
        # (filters, n_eeg, past + future): tap `past - 1` multiplies the current sample.
        self.filters = nn.Parameter(torch.zeros(config.gain_filters, config.n_eeg_channels, self.past + self.future))
        self.gain_projection = nn.Linear(config.d_model, config.patch_len * config.gain_filters)
        self.channel_scale = nn.Parameter(torch.ones(config.n_meg_channels, config.gain_filters))

    def forward(self, hidden: torch.Tensor, input_values: torch.Tensor, n_out: int) -> torch.Tensor:
        # (batch, segments', n_meg, patch_len, filters) -> (batch, n_out, n_meg, filters)
        gains = _segments_to_time(self.gain_projection(hidden).unflatten(-1, (self.patch_len, -1)))
        gains = gains[:, gains.shape[1] - n_out:]
        filtered = F.linear(_lagged_inputs(input_values, self.past, self.future, n_out), self.filters.flatten(1))
        # (batch, n_out, 1, filters) · (n_meg, filters) · gains, summed over the filters
        return (gains * (filtered[:, :, None, :] * self.channel_scale)).sum(-1)


class BrainformerForMEGPrediction(BrainformerPreTrainedModel):
    """Regression head (`config.head == "regression"`): one forward per window, non-autoregressive.

    Each decoder token is projected to its segment's `patch_len` samples. With
    `config.gain_filters > 0` the gain head (`BrainformerGainHead`) adds the trunk's gains on
    linear filters of the EEG, and with `config.skip_lags > 0` a causal lagged-linear EEG → MEG
    path is added to the output; with `config.hop_lookahead_past_samples > 0` the linear path
    also uses the served hop's own future (`BrainformerHopLookahead`).
    """

    def __init__(self, config: BrainformerConfig):
        _check_head(config, "regression", type(self))
        super().__init__(config)
        self.brainformer = BrainformerModel(config)
        self.projection = nn.Linear(config.d_model, config.patch_len)
        self.gain_head = BrainformerGainHead(config) if config.gain_filters else None
        if config.skip_lags > 0:
            # Left padding only (applied in forward), so output sample t sees inputs t-skip_lags+1 … t.
            self.linear_skip = nn.Conv1d(config.n_eeg_channels, config.n_meg_channels, config.skip_lags)
        else:
            self.linear_skip = None
        self.hop_lookahead = BrainformerHopLookahead(config) if config.hop_lookahead_past_samples else None
        self.post_init()

    @torch.no_grad()
    def set_linear_skip(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Set the lagged-linear skip path, e.g. from a closed-form lagged ridge fit.

        Args:
            weight: `(n_meg, n_eeg, skip_lags)`; `weight[:, :, k]` multiplies the input
                `skip_lags - 1 - k` samples in the past (the last tap is the current sample).
            bias: `(n_meg,)`.
        """
        if self.linear_skip is None:
            raise ValueError("set_linear_skip needs config.skip_lags > 0; this model has skip_lags = 0")
        for name, tensor, parameter in (("weight", weight, self.linear_skip.weight), ("bias", bias, self.linear_skip.bias)):
            tensor = torch.as_tensor(tensor)
            if tuple(tensor.shape) != tuple(parameter.shape):
                raise ValueError(f"set_linear_skip {name} has shape {tuple(tensor.shape)}; expected {tuple(parameter.shape)}")
            parameter.copy_(tensor)

    def forward(
        self, input_values: torch.Tensor, labels: torch.Tensor | None = None, last_samples: int | None = None
    ) -> BrainformerMEGPredictionOutput:
        """
        Args:
            input_values: EEG `(batch, window_samples, n_eeg)`, scaled units.
            labels: MEG `(batch, window_samples, n_meg)`, scaled units; gives `loss` when passed.
            last_samples: predict only the newest `last_samples` samples, `(batch, last_samples,
                n_meg)`, equal to the full prediction's `[:, -last_samples:]`: a server that publishes
                the newest hop of each window skips the decoder work for older segments. Not with
                `labels`.
        """
        if labels is not None:
            self._check_labels(labels, input_values)
        window = self.config.window_samples
        if last_samples is not None:
            if labels is not None:
                raise ValueError("last_samples cannot be combined with labels: the loss needs the whole window")
            if isinstance(last_samples, bool) or not isinstance(last_samples, int) or not 1 <= last_samples <= window:
                raise ValueError(f"last_samples = {last_samples!r}; expected an integer in 1 … window_samples={window}")
        n_out = window if last_samples is None else last_samples
        last_segments = None if last_samples is None else -(-last_samples // self.config.patch_len)
        hidden = self.brainformer(input_values, last_segments=last_segments).last_hidden_state
        predictions = _segments_to_time(self.projection(hidden))  # (batch, segments' samples, n_meg)
        if n_out < predictions.shape[1]:
            predictions = predictions[:, predictions.shape[1] - n_out:]
        if self.gain_head is not None:
            predictions = predictions + self.gain_head(hidden, input_values, n_out)
        if self.linear_skip is not None:
            lagged = _lagged_inputs(input_values, self.config.skip_lags, 0, n_out)  # (batch, n_out, n_eeg*lags)
            weight = self.linear_skip.weight.reshape(self.linear_skip.weight.shape[0], -1)  # (n_meg, n_eeg*lags)
            predictions = predictions + F.linear(lagged, weight, self.linear_skip.bias)
        if self.hop_lookahead is not None:
            predictions = predictions + self.hop_lookahead(input_values, n_out)

        loss = None
        if labels is not None:
            labels = labels.to(predictions.dtype)
            if self.config.loss == "mse":
                loss = F.mse_loss(predictions, labels)
            else:
                loss = F.huber_loss(predictions, labels, delta=self.config.huber_delta)
        return BrainformerMEGPredictionOutput(loss=loss, predictions=predictions)


class BrainformerForMEGTokens(BrainformerPreTrainedModel):
    """Tokens head (`config.head == "tokens"`), compatible with the original tokenized brainformer.

    MEG is quantized into `n_quantization_levels` levels (token ids 3 …; 0/1/2 are pad/bos/eos, see
    `brainformer.quantization.MEGQuantizer`). The decoder input at segment s is the embedding of the
    target tokens of segment s-1 (an all-bos segment first); the decoder's time stage is causal and
    the `patch_len` tokens of a segment are predicted jointly. With `patch_len=1` this is exactly
    per-sample autoregression.
    """

    def __init__(self, config: BrainformerConfig):
        _check_head(config, "tokens", type(self))
        super().__init__(config)
        self.brainformer = BrainformerModel(config)
        self.token_embedding = nn.Embedding(config.vocab_size, config.d_model)
        # Mixes the patch_len token embeddings of one segment (order-aware) into one decoder input.
        self.segment_token_projection = nn.Linear(config.patch_len * config.d_model, config.d_model)
        self.lm_head = nn.Linear(config.d_model, config.patch_len * config.vocab_size)
        self.post_init()

    def _time_to_segments(self, tokens: torch.Tensor) -> torch.Tensor:
        """`(batch, time, n_meg)` → `(batch, segments, n_meg, patch_len)`."""
        batch = tokens.shape[0]
        return tokens.reshape(batch, self.config.n_segments, self.config.patch_len, -1).transpose(2, 3)

    def _decoder_inputs(self, segment_tokens: torch.Tensor) -> torch.Tensor:
        """Target tokens `(batch, segments, n_meg, patch_len)` shifted right by one segment, embedded:
        `(batch, segments, n_meg, d_model)`."""
        bos = torch.full_like(segment_tokens[:, :1], self.config.bos_token_id)
        shifted = torch.cat([bos, segment_tokens[:, :-1]], dim=1)
        embedded = self.token_embedding(shifted)  # (batch, segments, n_meg, patch_len, d_model)
        return self.segment_token_projection(embedded.flatten(-2))

    def _logits(self, encoder_states: torch.Tensor, segment_tokens: torch.Tensor) -> torch.Tensor:
        """`(batch, segments, n_meg, patch_len, vocab_size)` logits, teacher-forced on `segment_tokens`."""
        hidden = self.brainformer.decoder(encoder_states, self._decoder_inputs(segment_tokens))
        return self.lm_head(hidden).unflatten(-1, (self.config.patch_len, self.config.vocab_size))

    def forward(self, input_values: torch.Tensor, labels: torch.Tensor | None = None) -> BrainformerMEGTokensOutput:
        """
        Args:
            input_values: EEG `(batch, window_samples, n_eeg)`, scaled units.
            labels: MEG token ids `(batch, window_samples, n_meg)` (int64); used for teacher forcing
                and the loss. Without labels the decoder is fed pad tokens, which is only meaningful
                for the first segment; use `generate()` for inference.
        """
        self._check_input_values(input_values)
        if labels is not None:
            self._check_labels(labels, input_values)
            targets = labels.long()
        else:
            targets = torch.full(
                (input_values.shape[0], self.config.window_samples, self.config.n_meg_channels),
                self.config.pad_token_id, dtype=torch.long, device=input_values.device,
            )
        encoder_states = self.brainformer.encoder(input_values)
        logits = _segments_to_time(self._logits(encoder_states, self._time_to_segments(targets)))

        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits.reshape(-1, self.config.vocab_size), targets.reshape(-1), ignore_index=self.config.pad_token_id
            )
        return BrainformerMEGTokensOutput(loss=loss, logits=logits)

    @torch.no_grad()
    def generate(self, input_values: torch.Tensor) -> torch.Tensor:
        """Greedy autoregressive decoding, one segment at a time.

        Args:
            input_values: EEG `(batch, window_samples, n_eeg)`, scaled units.

        Returns:
            MEG token ids `(batch, window_samples, n_meg)` (int64), always quantization levels
            (never pad/bos/eos), ready for `MEGQuantizer.decode`.
        """
        self._check_input_values(input_values)
        encoder_states = self.brainformer.encoder(input_values)
        batch = input_values.shape[0]
        # Static shape: undecoded segments hold pad; the causal decoder never looks at them.
        tokens = torch.full(
            (batch, self.config.n_segments, self.config.n_meg_channels, self.config.patch_len),
            self.config.pad_token_id, dtype=torch.long, device=input_values.device,
        )
        first_level = self.config.eos_token_id + 1
        for segment in range(self.config.n_segments):
            logits = self._logits(encoder_states, tokens)[:, segment]  # (batch, n_meg, patch_len, vocab)
            tokens[:, segment] = logits[..., first_level:].argmax(dim=-1) + first_level
        return _segments_to_time(tokens)


# AutoModel.from_pretrained(dir) gives the trunk once this module is imported.
AutoModel.register(BrainformerConfig, BrainformerModel, exist_ok=True)
