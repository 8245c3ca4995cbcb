"""Tensor name -> :class:`Role`: which tower, layer, block, module and expert a tensor is.

The mapper reads name *components* rather than one regex per model family. It is
checked against the real tensor-name lists of Llama, Mistral, Qwen2/2.5/3, Gemma 1-3,
Phi-3, GPT-2, GPT-NeoX, Falcon, BERT, Mixtral, Qwen-MoE, Qwen2-VL/2.5-VL (both
layouts) and LLaVA (``tests/data/names``). Names it does not know become
``block="other"``, never an error.

Steps, in order:

1. ``param``: the last component when it is a parameter suffix (``weight``, ``bias``,
   ``gamma``/``beta`` of old TF-style LayerNorms, ``inv_freq`` ...).
2. ``tower``: ``vision`` under ``visual`` / ``vision_tower`` / ``vision_model`` ...;
   ``projector`` under ``multi_modal_projector`` / ``mm_projector`` / ``visual.merger``;
   ``audio`` under ``audio_tower``; else ``language``.
3. ``layer``: the number after the first ``layers`` / ``layer`` / ``h`` / ``blocks``.
4. ``expert``: the number after ``experts``; ``"shared"`` under ``shared_expert``.
5. ``block``: norm (any ``*norm*`` / ``ln_*`` component), router (``gate`` of an MoE,
   ``router``), embedding, lm_head (``lm_head``, ``embed_out``, top-level ``output``,
   ``cls``/``classifier``/``score``/``pooler`` heads), attention (under ``self_attn`` /
   ``attn`` / ``attention`` / ``self_attention``), mlp (under ``mlp`` / ``feed_forward`` /
   ``block_sparse_moe`` / ``experts``, or BERT's ``intermediate`` / ``output.dense``),
   projector (projector tower), else other.
6. ``module``: one canonical vocabulary across families, so ``by("module")`` lines up
   GPT-2's ``c_fc`` with Llama's ``up_proj``:

   =================  ================================================================
   canonical          stored as
   =================  ================================================================
   q_proj k_proj      q_proj / query / q / wq, k_proj / key / k / wk, v_proj / value
   v_proj
   o_proj             o_proj, out_proj, attention ``dense``, ``c_proj`` in attention,
                      ``attn.proj`` (Qwen-VL vision), BERT ``attention.output.dense``
   qkv_proj           qkv_proj, qkv, query_key_value, c_attn, Wqkv, W_pack (fused)
   gate_proj          gate_proj, w1 (Mixtral experts)
   up_proj            up_proj, w3, c_fc, fc1, fc_in, dense_h_to_4h, BERT intermediate
   down_proj          down_proj, w2, c_proj in an MLP, fc2, fc_out, dense_4h_to_h,
                      BERT ``output.dense``
   gate_up_proj       gate_up_proj (fused, Phi-3)
   input_layernorm    input_layernorm, ln_1, norm1, layer_norm1, attention_norm
   post_attention_    post_attention_layernorm, ln_2, norm2, layer_norm2, ffn_norm,
   layernorm          BERT ``attention.output.LayerNorm``
   final_norm         model.norm, ln_f, final_layer_norm, post_layernorm
   embed_tokens       embed_tokens, wte, word_embeddings, embed_in, tok_embeddings
   embed_positions    wpe, position_embeddings, position_embedding, embed_positions
   router             mlp.gate, block_sparse_moe.gate, router
   =================  ================================================================

   Other components keep their own (lower-cased) name.

Users add rules with :class:`Rule` (checked after the built-in logic, overriding it)::

    >>> mapper = RoleMapper([Rule(r"^adapter\\.", block="other", module="adapter")])
    >>> mapper("adapter.weight").module
    'adapter'
    >>> role_of("model.layers.3.mlp.down_proj.weight")
    Role(tower='language', layer=3, block='mlp', module='down_proj', expert=None, param='weight')
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from functools import lru_cache

__all__ = ["Role", "Rule", "RoleMapper", "role_of", "BLOCKS", "TOWERS"]

#: Every block a role can have.
BLOCKS = ("attention", "mlp", "embedding", "lm_head", "norm", "router", "projector", "other")
#: Every tower a role can have.
TOWERS = ("language", "vision", "audio", "projector")


@dataclass(frozen=True)
class Role:
    """What a tensor is in its model.

    Attributes:
        tower: ``"language"``, ``"vision"``, ``"audio"`` or ``"projector"``.
        layer: the transformer block index within its tower, or ``None``.
        block: one of :data:`BLOCKS`.
        module: canonical module name (see the module docstring), e.g. ``"down_proj"``.
        expert: MoE expert index, ``"shared"`` for a shared expert, else ``None``.
        param: the parameter suffix: ``"weight"``, ``"bias"`` or another last component.
    """

    tower: str = "language"
    layer: int | None = None
    block: str = "other"
    module: str = "other"
    expert: int | str | None = None
    param: str = "weight"

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Rule:
    """A user rule: when ``pattern`` (a regex, ``re.search``) matches a name, the given
    fields override what the built-in mapper found. Fields left ``None`` keep it.

    Example:
        >>> Rule(r"\\.lora_[AB]\\.", block="other", module="lora").module
        'lora'
    """

    pattern: str
    tower: str | None = None
    layer: int | None = None
    block: str | None = None
    module: str | None = None
    expert: int | str | None = None

    def __post_init__(self) -> None:
        try:
            re.compile(self.pattern)
        except re.error as e:
            raise ValueError(f"Rule pattern {self.pattern!r} is not a valid regex: {e}") from e
        if self.block is not None and self.block not in BLOCKS:
            raise ValueError(f"Rule block {self.block!r} is not one of {BLOCKS}")
        if self.tower is not None and self.tower not in TOWERS:
            raise ValueError(f"Rule tower {self.tower!r} is not one of {TOWERS}")

    def apply(self, role: Role) -> Role:
        fields = {k: getattr(self, k) for k in ("tower", "layer", "block", "module", "expert")}
        return replace(role, **{k: v for k, v in fields.items() if v is not None})


class RoleMapper:
    """Maps tensor names to :class:`Role`; user ``rules`` override the built-ins, later
    rules over earlier ones. Results are cached per name."""

    def __init__(self, rules: Iterable[Rule] = ()) -> None:
        self.rules = list(rules)
        self._compiled = [(re.compile(r.pattern), r) for r in self.rules]
        self._cache: dict[str, Role] = {}

    def __call__(self, name: str) -> Role:
        role = self._cache.get(name)
        if role is None:
            role = _builtin_role(name)
            for rx, rule in self._compiled:
                if rx.search(name):
                    role = rule.apply(role)
            self._cache[name] = role
        return role


def role_of(name: str) -> Role:
    """The built-in :class:`Role` of a tensor name (no user rules)."""
    return _builtin_role(name)


# -- vocabulary --------------------------------------------------------------------------
_PARAMS = {
    "weight",
    "bias",
    "gamma",
    "beta",
    "scale",
    "inv_freq",
    "masked_bias",
    "weight_scale",
    "scb",
    "weight_format",
    "e_score_correction_bias",
    "g",
    "b",
}
_VISION = {"visual", "vision_tower", "vision_model", "vision_encoder", "image_encoder", "vpm", "vision"}
_PROJECTOR = {
    "multi_modal_projector",
    "mm_projector",
    "merger",
    "connector",
    "aligner",
    "resampler",
    "embed_vision",
    "mlp1",
}
_AUDIO = {"audio_tower", "audio_encoder", "audio_model"}
_LAYERS = {"layers", "layer", "h", "blocks", "block"}
_ATTN = {"self_attn", "attn", "attention", "self_attention", "cross_attn", "encoder_attn", "crossattention"}
_MLP = {
    "mlp",
    "feed_forward",
    "ffn",
    "block_sparse_moe",
    "experts",
    "intermediate",
    "moe",
    "shared_expert",
    "shared_experts",
}
_EMBED = {
    "embed_tokens": "embed_tokens",
    "wte": "embed_tokens",
    "word_embeddings": "embed_tokens",
    "embed_in": "embed_tokens",
    "tok_embeddings": "embed_tokens",
    "wpe": "embed_positions",
    "position_embeddings": "embed_positions",
    "position_embedding": "embed_positions",
    "embed_positions": "embed_positions",
    "token_type_embeddings": "token_type_embeddings",
    "patch_embed": "patch_embed",
    "patch_embedding": "patch_embed",
    "class_embedding": "class_embedding",
    "pos_embed": "embed_positions",
    "rotary_pos_emb": "rotary_pos_emb",
}
_HEADS = {
    "lm_head": "lm_head",
    "embed_out": "lm_head",
    "output": "lm_head",
    "cls": "cls",
    "classifier": "classifier",
    "score": "score",
    "pooler": "pooler",
    "head": "head",
}
_NORM = re.compile(r"norm|layrnorm|^ln(_|\d|$)|_ln$|^ln_", re.I)
_ATTN_MODULES = {
    "q_proj": "q_proj",
    "query": "q_proj",
    "q": "q_proj",
    "wq": "q_proj",
    "k_proj": "k_proj",
    "key": "k_proj",
    "k": "k_proj",
    "wk": "k_proj",
    "v_proj": "v_proj",
    "value": "v_proj",
    "v": "v_proj",
    "wv": "v_proj",
    "o_proj": "o_proj",
    "out_proj": "o_proj",
    "dense": "o_proj",
    "c_proj": "o_proj",
    "proj": "o_proj",
    "wo": "o_proj",
    "o": "o_proj",
    "qkv_proj": "qkv_proj",
    "qkv": "qkv_proj",
    "query_key_value": "qkv_proj",
    "c_attn": "qkv_proj",
    "wqkv": "qkv_proj",
    "w_pack": "qkv_proj",
    "in_proj": "qkv_proj",
}
_MLP_MODULES = {
    "gate_proj": "gate_proj",
    "w1": "gate_proj",
    "up_proj": "up_proj",
    "w3": "up_proj",
    "c_fc": "up_proj",
    "fc1": "up_proj",
    "fc_in": "up_proj",
    "dense_h_to_4h": "up_proj",
    "down_proj": "down_proj",
    "w2": "down_proj",
    "c_proj": "down_proj",
    "fc2": "down_proj",
    "fc_out": "down_proj",
    "dense_4h_to_h": "down_proj",
    "gate_up_proj": "gate_up_proj",
}
_NORM_MODULES = {
    "input_layernorm": "input_layernorm",
    "ln_1": "input_layernorm",
    "norm1": "input_layernorm",
    "layer_norm1": "input_layernorm",
    "attention_norm": "input_layernorm",
    "ln_attn": "input_layernorm",
    "post_attention_layernorm": "post_attention_layernorm",
    "ln_2": "post_attention_layernorm",
    "norm2": "post_attention_layernorm",
    "layer_norm2": "post_attention_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "ln_mlp": "post_attention_layernorm",
    "norm": "final_norm",
    "ln_f": "final_norm",
    "final_layer_norm": "final_norm",
    "final_layernorm": "final_norm",
    "norm_f": "final_norm",
    "post_layernorm": "final_norm",
}
_BUFFERS = {"inv_freq", "masked_bias"}


@lru_cache(maxsize=65536)
def _builtin_role(name: str) -> Role:
    parts = name.split(".")
    lower = [p.lower() for p in parts]
    if len(parts) > 1 and lower[-1] in _PARAMS:
        param, body = parts[-1], lower[:-1]
    else:
        param, body = "weight", lower
    tower = _tower(body)
    layer = _layer(body)
    expert = _expert(body)
    block, module = _block_module(body, lower[-1], layer, tower, expert)
    return Role(tower, layer, block, module, expert, param)


def _tower(body: list[str]) -> str:
    if any(p in _PROJECTOR for p in body):
        return "projector"
    if any(p in _VISION for p in body):
        return "vision"
    if any(p in _AUDIO for p in body):
        return "audio"
    return "language"


def _layer(body: list[str]) -> int | None:
    for p, nxt in itertools.pairwise(body):
        if p in _LAYERS and nxt.isdigit():
            return int(nxt)
    return None


def _expert(body: list[str]) -> int | str | None:
    for p, nxt in zip(body, [*body[1:], ""]):
        if p == "experts" and nxt.isdigit():
            return int(nxt)
        if p in ("shared_expert", "shared_experts"):
            return "shared"
    return None


def _block_module(
    body: list[str], last_raw: str, layer: int | None, tower: str, expert: int | str | None
) -> tuple[str, str]:
    last = body[-1] if body else ""
    parent = body[-2] if len(body) > 1 else ""
    in_attn = any(p in _ATTN for p in body)
    in_mlp = expert is not None or any(p in _MLP for p in body)

    # Buffers saved with the weights: rotary caches and causal masks (GPT-2, NeoX).
    if last_raw in _BUFFERS or (last_raw == "bias" and last in ("attn", "attention")):
        return "other", "buffer"
    if _NORM.search(last):
        if parent == "output" and len(body) > 2 and body[-3] == "attention":  # BERT
            return "norm", "post_attention_layernorm"
        if parent == "output":  # BERT layer.N.output.LayerNorm
            return "norm", "post_mlp_layernorm"
        if parent == "embeddings":
            return "norm", "embedding_norm"
        if last == "norm" and parent in _ATTN:
            return "norm", f"{parent}_norm"
        if layer is None and last == "layernorm" and parent not in ("model", "transformer", ""):
            return "norm", f"{parent}.{last}"  # e.g. BERT's cls.predictions.transform.LayerNorm
        return "norm", _NORM_MODULES.get(last, last)
    if tower == "projector":
        idx = max(i for i, p in enumerate(body) if p in _PROJECTOR)
        return "projector", ".".join(body[idx + 1 :]) or body[idx]
    if last == "router" or last == "shared_expert_gate" or (last == "gate" and (in_mlp or "moe" in body)):
        return "router", "shared_expert_gate" if last == "shared_expert_gate" else "router"
    if not in_attn and not in_mlp:
        for p in reversed(body):
            if p in _EMBED:
                return "embedding", _EMBED[p]
        if layer is None and body:
            if last in ("lm_head", "embed_out") or body[0] in ("lm_head", "output"):
                return "lm_head", "lm_head"
            head = next((p for p in body if p in _HEADS and p not in ("output", "head")), None)
            if head is not None:
                return "lm_head", _HEADS[head]
    if in_attn:
        if parent == "output" and last == "dense":  # BERT attention.output.dense
            return "attention", "o_proj"
        return "attention", _ATTN_MODULES.get(last, last or "attention")
    if in_mlp:
        if last == "dense" and parent == "intermediate":  # BERT layer.N.intermediate.dense
            return "mlp", "up_proj"
        return "mlp", _MLP_MODULES.get(last, last or "mlp")
    if layer is not None and last == "dense" and parent == "output":  # BERT layer.N.output.dense
        return "mlp", "down_proj"
    if layer is not None and last in _MLP_MODULES:
        return "mlp", _MLP_MODULES[last]
    return "other", last or "other"
