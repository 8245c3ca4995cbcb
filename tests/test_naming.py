"""Name -> Role on real tensor-name lists of each model family (tests/data/names)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from deltascope.naming import BLOCKS, Role, RoleMapper, Rule, role_of

NAMES = Path(__file__).parent / "data" / "names"


def load(family: str) -> list[str]:
    lines = (NAMES / f"{family}.txt").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


# (tower, block) counts worked out by hand from each architecture (layers x tensors per
# layer + the rest), independently of the mapper.
EXPECTED = {
    "llama": {
        ("language", "attention"): 32 * 4,
        ("language", "mlp"): 32 * 3,
        ("language", "norm"): 32 * 2 + 1,
        ("language", "embedding"): 1,
        ("language", "lm_head"): 1,
    },
    "mistral": {
        ("language", "attention"): 128,
        ("language", "mlp"): 96,
        ("language", "norm"): 65,
        ("language", "embedding"): 1,
        ("language", "lm_head"): 1,
    },
    "qwen2": {
        ("language", "attention"): 24 * 7,
        ("language", "mlp"): 24 * 3,
        ("language", "norm"): 24 * 2 + 1,
        ("language", "embedding"): 1,
    },  # tied: no lm_head
    "qwen3": {
        ("language", "attention"): 36 * 4,
        ("language", "mlp"): 36 * 3,
        ("language", "norm"): 36 * 4 + 1,
        ("language", "embedding"): 1,
        ("language", "lm_head"): 1,
    },
    "gemma": {
        ("language", "attention"): 18 * 4,
        ("language", "mlp"): 18 * 3,
        ("language", "norm"): 18 * 2 + 1,
        ("language", "embedding"): 1,
    },
    "gemma2": {
        ("language", "attention"): 42 * 4,
        ("language", "mlp"): 42 * 3,
        ("language", "norm"): 42 * 4 + 1,
        ("language", "embedding"): 1,
    },
    "gemma3": {
        ("language", "attention"): 34 * 4,
        ("language", "mlp"): 34 * 3,
        ("language", "norm"): 34 * 6 + 1,
        ("language", "embedding"): 1,
        ("vision", "attention"): 27 * 8,
        ("vision", "mlp"): 27 * 4,
        ("vision", "norm"): 27 * 4 + 2,
        ("vision", "embedding"): 3,
        ("projector", "projector"): 1,
        ("projector", "norm"): 1,
    },
    "phi3": {
        ("language", "attention"): 32 * 2,
        ("language", "mlp"): 32 * 2,
        ("language", "norm"): 65,
        ("language", "embedding"): 1,
        ("language", "lm_head"): 1,
    },
    "gpt2": {
        ("language", "attention"): 12 * 4,
        ("language", "mlp"): 12 * 4,
        ("language", "norm"): 12 * 4 + 2,
        ("language", "embedding"): 2,
        ("language", "other"): 12,
    },  # other = attn.bias mask buffers
    "gpt_neox": {
        ("language", "attention"): 6 * 4,
        ("language", "mlp"): 6 * 4,
        ("language", "norm"): 6 * 4 + 2,
        ("language", "embedding"): 1,
        ("language", "lm_head"): 1,
        ("language", "other"): 6 * 3,
    },
    "falcon": {
        ("language", "attention"): 32 * 2,
        ("language", "mlp"): 32 * 2,
        ("language", "norm"): 32 * 2 + 2,
        ("language", "embedding"): 1,
        ("language", "lm_head"): 1,
    },
    "mixtral": {
        ("language", "attention"): 128,
        ("language", "mlp"): 32 * 8 * 3,
        ("language", "router"): 32,
        ("language", "norm"): 65,
        ("language", "embedding"): 1,
        ("language", "lm_head"): 1,
    },
    "qwen2_moe": {
        ("language", "attention"): 2 * 7,
        ("language", "mlp"): 2 * (60 * 3 + 3),
        ("language", "router"): 2 * 2,
        ("language", "norm"): 2 * 2 + 1,
        ("language", "embedding"): 1,
        ("language", "lm_head"): 1,
    },
    "qwen3_moe": {
        ("language", "attention"): 2 * 4,
        ("language", "mlp"): 2 * 128 * 3,
        ("language", "router"): 2,
        ("language", "norm"): 2 * 4 + 1,
        ("language", "embedding"): 1,
        ("language", "lm_head"): 1,
    },
    "bert": {
        ("language", "attention"): 12 * 8,
        ("language", "mlp"): 12 * 4,
        ("language", "norm"): 12 * 4 + 4,
        ("language", "embedding"): 3,
        ("language", "lm_head"): 8,
    },
    "qwen2_vl": {
        ("language", "attention"): 28 * 7,
        ("language", "mlp"): 28 * 3,
        ("language", "norm"): 57,
        ("language", "embedding"): 1,
        ("language", "lm_head"): 1,
        ("vision", "attention"): 32 * 4,
        ("vision", "mlp"): 32 * 4,
        ("vision", "norm"): 32 * 4,
        ("vision", "embedding"): 1,
        ("projector", "projector"): 4,
        ("projector", "norm"): 2,
    },
    "qwen2_5_vl": {
        ("language", "attention"): 28 * 7,
        ("language", "mlp"): 28 * 3,
        ("language", "norm"): 57,
        ("language", "embedding"): 1,
        ("language", "lm_head"): 1,
        ("vision", "attention"): 32 * 4,
        ("vision", "mlp"): 32 * 6,
        ("vision", "norm"): 32 * 2,
        ("vision", "embedding"): 1,
        ("projector", "projector"): 4,
        ("projector", "norm"): 1,
    },
    "llava": {
        ("language", "attention"): 128,
        ("language", "mlp"): 96,
        ("language", "norm"): 65,
        ("language", "embedding"): 1,
        ("language", "lm_head"): 1,
        ("vision", "attention"): 24 * 8,
        ("vision", "mlp"): 24 * 4,
        ("vision", "norm"): 24 * 4 + 4,
        ("vision", "embedding"): 3,
        ("projector", "projector"): 4,
    },
}
EXPECTED["qwen2_5_vl_new_layout"] = EXPECTED["qwen2_5_vl"]


@pytest.mark.parametrize("family", sorted(EXPECTED))
def test_block_counts_per_family(family: str) -> None:
    counts = Counter((role_of(n).tower, role_of(n).block) for n in load(family))
    assert dict(counts) == EXPECTED[family]


def test_every_list_is_covered() -> None:
    files = {p.stem for p in NAMES.glob("*.txt")}
    assert files == set(EXPECTED)


@pytest.mark.parametrize("family", sorted(EXPECTED))
def test_layers_are_contiguous(family: str) -> None:
    by_tower: dict[str, set[int]] = {}
    for n in load(family):
        r = role_of(n)
        if r.layer is not None:
            by_tower.setdefault(r.tower, set()).add(r.layer)
    for tower, layers in by_tower.items():
        assert layers == set(range(max(layers) + 1)), (tower, sorted(layers))


SPOT = {
    "model.layers.7.self_attn.q_proj.weight": ("language", 7, "attention", "q_proj", None),
    "model.layers.7.mlp.gate_up_proj.weight": ("language", 7, "mlp", "gate_up_proj", None),
    "model.layers.7.self_attn.qkv_proj.weight": ("language", 7, "attention", "qkv_proj", None),
    "model.layers.3.self_attn.k_norm.weight": ("language", 3, "norm", "k_norm", None),
    "model.norm.weight": ("language", None, "norm", "final_norm", None),
    "model.language_model.norm.weight": ("language", None, "norm", "final_norm", None),
    "h.11.attn.c_attn.weight": ("language", 11, "attention", "qkv_proj", None),
    "h.11.attn.c_proj.weight": ("language", 11, "attention", "o_proj", None),
    "h.11.mlp.c_fc.weight": ("language", 11, "mlp", "up_proj", None),
    "h.11.mlp.c_proj.weight": ("language", 11, "mlp", "down_proj", None),
    "h.11.attn.bias": ("language", 11, "other", "buffer", None),
    "wte.weight": ("language", None, "embedding", "embed_tokens", None),
    "gpt_neox.layers.2.mlp.dense_h_to_4h.weight": ("language", 2, "mlp", "up_proj", None),
    "gpt_neox.layers.2.attention.query_key_value.weight": ("language", 2, "attention", "qkv_proj", None),
    "embed_out.weight": ("language", None, "lm_head", "lm_head", None),
    "transformer.h.5.mlp.dense_4h_to_h.weight": ("language", 5, "mlp", "down_proj", None),
    "model.layers.0.block_sparse_moe.experts.7.w1.weight": ("language", 0, "mlp", "gate_proj", 7),
    "model.layers.0.block_sparse_moe.experts.7.w3.weight": ("language", 0, "mlp", "up_proj", 7),
    "model.layers.0.block_sparse_moe.gate.weight": ("language", 0, "router", "router", None),
    "model.layers.1.mlp.experts.59.down_proj.weight": ("language", 1, "mlp", "down_proj", 59),
    "model.layers.1.mlp.shared_expert.up_proj.weight": ("language", 1, "mlp", "up_proj", "shared"),
    "model.layers.1.mlp.shared_expert_gate.weight": ("language", 1, "router", "shared_expert_gate", None),
    "model.layers.1.mlp.gate.weight": ("language", 1, "router", "router", None),
    "visual.blocks.31.attn.qkv.weight": ("vision", 31, "attention", "qkv_proj", None),
    "visual.blocks.31.attn.proj.bias": ("vision", 31, "attention", "o_proj", None),
    "visual.blocks.31.norm1.weight": ("vision", 31, "norm", "input_layernorm", None),
    "visual.merger.mlp.0.weight": ("projector", None, "projector", "mlp.0", None),
    "visual.merger.ln_q.weight": ("projector", None, "norm", "ln_q", None),
    "model.visual.patch_embed.proj.weight": ("vision", None, "embedding", "patch_embed", None),
    "language_model.model.layers.4.mlp.down_proj.weight": ("language", 4, "mlp", "down_proj", None),
    "language_model.lm_head.weight": ("language", None, "lm_head", "lm_head", None),
    "vision_tower.vision_model.encoder.layers.23.self_attn.out_proj.weight": (
        "vision",
        23,
        "attention",
        "o_proj",
        None,
    ),
    "vision_tower.vision_model.encoder.layers.23.layer_norm2.bias": (
        "vision",
        23,
        "norm",
        "post_attention_layernorm",
        None,
    ),
    "multi_modal_projector.linear_1.weight": ("projector", None, "projector", "linear_1", None),
    "bert.encoder.layer.3.attention.self.value.weight": ("language", 3, "attention", "v_proj", None),
    "bert.encoder.layer.3.attention.output.dense.weight": ("language", 3, "attention", "o_proj", None),
    "bert.encoder.layer.3.intermediate.dense.weight": ("language", 3, "mlp", "up_proj", None),
    "bert.encoder.layer.3.output.dense.weight": ("language", 3, "mlp", "down_proj", None),
    "bert.encoder.layer.3.output.LayerNorm.gamma": ("language", 3, "norm", "post_mlp_layernorm", None),
    "output.weight": ("language", None, "lm_head", "lm_head", None),
}


@pytest.mark.parametrize("name", sorted(SPOT))
def test_spot_checks(name: str) -> None:
    r = role_of(name)
    assert (r.tower, r.layer, r.block, r.module, r.expert) == SPOT[name]


def test_param_suffix() -> None:
    assert role_of("h.0.mlp.c_fc.bias").param == "bias"
    assert role_of("bert.embeddings.LayerNorm.gamma").param == "gamma"
    assert role_of("vision_tower.vision_model.embeddings.class_embedding").module == "class_embedding"


def test_unknown_names_are_other_not_errors() -> None:
    for name in ["", "x", "foo.bar.baz", "adapter.0.weight", "....", "layers.x.weight", "model.layers.99999.zzz"]:
        r = role_of(name)
        assert r.block in BLOCKS


def test_user_rules_override() -> None:
    mapper = RoleMapper(
        [
            Rule(r"\.lora_[AB]\.", block="other", module="lora"),
            Rule(r"^adapter\.", tower="projector", block="projector"),
        ]
    )
    assert mapper("model.layers.1.self_attn.q_proj.lora_A.weight").module == "lora"
    assert mapper("model.layers.1.self_attn.q_proj.lora_A.weight").layer == 1  # kept
    r = mapper("adapter.proj.weight")
    assert (r.tower, r.block) == ("projector", "projector")
    assert mapper("model.norm.weight") == role_of("model.norm.weight")


def test_rule_validation() -> None:
    with pytest.raises(ValueError, match="not one of"):
        Rule("x", block="ffn")
    with pytest.raises(ValueError, match="valid regex"):
        Rule("(")


def test_role_is_plain_data() -> None:
    assert Role().to_dict() == {
        "tower": "language",
        "layer": None,
        "block": "other",
        "module": "other",
        "expert": None,
        "param": "weight",
    }
