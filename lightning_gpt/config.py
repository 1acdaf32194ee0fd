"""The one typed configuration of a GPT model.

Every architectural choice lives here, as plain serializable fields (variant choices are strings), so a config can
travel inside a checkpoint and be written in a YAML recipe.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Optional

if TYPE_CHECKING:
    from typing_extensions import TypeIs

__all__ = ["GPTConfig", "IGNORE_INDEX", "PRESETS", "is_int"]

ACTIVATIONS = ("gelu", "gelu_tanh")
FEATURE_MAPS = ("elu", "relu", "softmax", "identity")
SPARSE_PATTERNS = ("local", "strided", "longformer")

IGNORE_INDEX = -100
"""Target id that the loss skips (padding); PyTorch's ``cross_entropy`` default. Defined once, here."""


def is_int(value: object) -> TypeIs[int]:
    """Whether ``value`` is an ``int`` and not a ``bool`` (which Python counts as an int); narrows the type for mypy."""
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class GPTConfig:
    """Architecture of a decoder-only GPT.

    Args:
        vocab_size: number of real token ids (the tokenizer's size). ``GPTModule`` sets it from the data module's
            tokenizer; ids from ``vocab_size`` up to ``padded_vocab_size`` are padding that decoding never emits.
        block_size: the context length (size of the learned position table). The data module and the generation
            loop read it from here; it is declared nowhere else.
        n_layer: number of transformer blocks.
        n_head: number of attention heads; must divide ``n_embd``.
        n_embd: model width.
        dropout: dropout probability on embeddings, attention weights, and residual branches.
        bias: whether Linear layers and LayerNorms carry a bias (GPT-2 does).
        attention: name of the attention core in the registry (``standard``, ``flash``, ``linear``, ``sparse``, or a
            user-registered name). The name is checked when the model is built, so a config naming a core whose
            plugin is not imported yet can still be read.
        attention_window: window of the ``sparse`` local/longformer patterns (each token sees itself and the
            ``attention_window - 1`` tokens before it); also the block size of the ``strided`` pattern.
        attention_stride: stride of the ``strided`` pattern (each token also sees every earlier token whose position is
            ``stride - 1`` modulo ``stride``); defaults to ``attention_window``.
        sparse_pattern: ``local`` (sliding window), ``strided`` (Sparse Transformer) or ``longformer`` (local + global).
        n_global_tokens: number of leading positions that every token attends to (``longformer`` pattern).
        feature_map: feature map of ``linear`` attention: ``elu`` (elu(x)+1), ``relu``, ``softmax`` (over the head dim)
            or ``identity``.
        linear_chunk_size: chunk length of the chunked training form of ``linear`` attention.
        activation: MLP activation, ``gelu`` (exact) or ``gelu_tanh`` (GPT-2's approximation).
        scale_embeddings: multiply token embeddings by sqrt(n_embd) (the seed's description); off for GPT-2.
        tie_weights: share the token embedding matrix with the LM head (GPT-2 does).
        layer_norm_eps: epsilon of every LayerNorm.
        mlp_ratio: hidden width of the MLP as a multiple of ``n_embd``.
        padded_vocab_multiple: the embedding table and the LM head have ``padded_vocab_size`` rows, ``vocab_size``
            rounded up to a multiple of this (64 gives tensor-core-friendly shapes, and nanoGPT's 50304 rows for
            GPT-2's 50257 tokens); 1 for no padding.
    """

    vocab_size: int = 50304
    block_size: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True
    attention: str = "standard"
    attention_window: int = 256
    attention_stride: Optional[int] = None
    sparse_pattern: Literal["local", "strided", "longformer"] = "local"
    n_global_tokens: int = 1
    feature_map: Literal["elu", "relu", "softmax", "identity"] = "elu"
    linear_chunk_size: int = 64
    activation: Literal["gelu", "gelu_tanh"] = "gelu_tanh"
    scale_embeddings: bool = False
    tie_weights: bool = True
    layer_norm_eps: float = 1e-5
    mlp_ratio: int = 4
    padded_vocab_multiple: int = 1

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "block_size",
            "n_layer",
            "n_head",
            "n_embd",
            "mlp_ratio",
            "linear_chunk_size",
            "padded_vocab_multiple",
        ):
            _check_int(self, name, minimum=1)
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"GPTConfig.n_embd ({self.n_embd}) must be divisible by GPTConfig.n_head ({self.n_head}): each head "
                f"gets n_embd / n_head dimensions. Pick, e.g., n_head={_divisor_hint(self.n_embd, self.n_head)}."
            )
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout!r}.")
        _check_int(self, "attention_window", minimum=1)
        if self.attention_stride is not None:
            _check_int(self, "attention_stride", minimum=1)
        _check_int(self, "n_global_tokens", minimum=0)
        if self.n_global_tokens > self.block_size:
            raise ValueError(
                f"GPTConfig.n_global_tokens ({self.n_global_tokens}) cannot exceed block_size ({self.block_size})."
            )
        if self.sparse_pattern not in SPARSE_PATTERNS:
            raise ValueError(f"GPTConfig.sparse_pattern must be one of {SPARSE_PATTERNS}, got {self.sparse_pattern!r}.")
        if self.feature_map not in FEATURE_MAPS:
            raise ValueError(f"GPTConfig.feature_map must be one of {FEATURE_MAPS}, got {self.feature_map!r}.")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"GPTConfig.activation must be one of {ACTIVATIONS}, got {self.activation!r}.")
        if not isinstance(self.layer_norm_eps, (int, float)) or self.layer_norm_eps <= 0:
            raise ValueError(f"GPTConfig.layer_norm_eps must be > 0, got {self.layer_norm_eps!r}.")
        if not isinstance(self.attention, str) or not self.attention:
            raise ValueError(f"GPTConfig.attention must be a non-empty string, got {self.attention!r}.")
        # The name itself is checked where the core is built (GPT / GPTModule), not here: a config that names a
        # user-registered core must stay readable (e.g. from a checkpoint) before the plugin that registers it is
        # imported, and the config stays below the attention registry in the import graph.

    @property
    def head_size(self) -> int:
        """Dimensions per attention head."""
        return self.n_embd // self.n_head

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the embedding table and the LM head: ``vocab_size`` rounded up to ``padded_vocab_multiple``."""
        m = self.padded_vocab_multiple
        return -(-self.vocab_size // m) * m

    @property
    def stride(self) -> int:
        """Effective stride of the ``strided`` sparse pattern."""
        return self.attention_stride if self.attention_stride is not None else self.attention_window

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> "GPTConfig":
        """Build a named preset (see ``PRESETS``), with field overrides.

        Args:
            name: preset name, e.g. ``gpt2`` or ``tiny``.
            overrides: fields that replace the preset's values.
        """
        if name not in PRESETS:
            raise ValueError(f"Unknown GPTConfig preset {name!r}. Known presets: {sorted(PRESETS)}.")
        return cls(**{**PRESETS[name], **overrides})

    def to_dict(self) -> dict[str, Any]:
        """A plain dict of the fields (what checkpoints store)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GPTConfig":
        """Rebuild a config from ``to_dict`` output, rejecting unknown keys with a clear message."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown GPTConfig field(s) {unknown}. Known fields: {sorted(known)}.")
        return cls(**data)


def _check_int(config: GPTConfig, name: str, minimum: int) -> None:
    value = getattr(config, name)
    if not is_int(value) or value < minimum:
        raise ValueError(f"GPTConfig.{name} must be an integer >= {minimum}, got {value!r}.")


def _divisor_hint(n_embd: int, n_head: int) -> int:
    divisors = [d for d in range(1, n_embd + 1) if n_embd % d == 0]
    return min(divisors, key=lambda d: abs(d - n_head))


_GPT2 = dict(vocab_size=50257, block_size=1024, bias=True, tie_weights=True, activation="gelu_tanh")

PRESETS: dict[str, dict[str, Any]] = {
    "gpt2": dict(_GPT2, n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": dict(_GPT2, n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": dict(_GPT2, n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": dict(_GPT2, n_layer=48, n_head=25, n_embd=1600),
    # nanoGPT's shakespeare-char CPU size.
    "small-char": dict(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128),
    # For tests: 2 layers, 32 wide.
    "tiny": dict(vocab_size=128, block_size=64, n_layer=2, n_head=4, n_embd=32),
}
