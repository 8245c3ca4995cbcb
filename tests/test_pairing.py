"""Pairing base and tuned tensors: exact names, aliases, and the mismatch report."""

from __future__ import annotations

from deltascope.checkpoint.base import TensorInfo
from deltascope.pairing import canonical_name, pair_tensors


def infos(spec: dict[str, tuple]) -> dict[str, TensorInfo]:
    out = {}
    for name, v in spec.items():
        shape, dtype = (v, "BF16") if isinstance(v[0], int) else v
        out[name] = TensorInfo(name, dtype, tuple(shape), "f")
    return out


def kinds(result) -> dict[str, str]:
    return dict(zip(result.mismatches["name"], result.mismatches["kind"]))


def test_exact_names_pair() -> None:
    b = infos({"a.weight": (2, 2), "b.weight": (3,)})
    r = pair_tensors(b, dict(b))
    assert [p.name for p in r.pairs] == ["a.weight", "b.weight"]
    assert len(r.mismatches) == 0


def test_missing_extra_shape_dtype() -> None:
    b = infos({"keep": (2, 2), "gone": (2,), "grow": (4, 2), "cast": (3,)})
    t = infos({"keep": (2, 2), "new": (2,), "grow": (5, 2), "cast": ((3,), "F32")})
    r = pair_tensors(b, t)
    assert kinds(r) == {
        "gone": "missing_in_tuned",
        "new": "extra_in_tuned",
        "grow": "shape_changed",
        "cast": "dtype_changed",
    }
    assert [p.name for p in r.pairs] == ["keep", "cast"]  # dtype change is still compared
    row = r.mismatches.set_index("name").loc["grow"]
    assert row["base_shape"] == [4, 2] and row["tuned_shape"] == [5, 2]


def test_new_transformers_layout_pairs_through_aliases() -> None:
    base = infos(
        {
            "model.layers.0.mlp.up_proj.weight": (4, 2),
            "visual.blocks.0.attn.qkv.weight": (6, 2),
            "lm_head.weight": (8, 2),
        }
    )
    tuned = infos(
        {
            "model.language_model.layers.0.mlp.up_proj.weight": (4, 2),
            "model.visual.blocks.0.attn.qkv.weight": (6, 2),
            "lm_head.weight": (8, 2),
        }
    )
    r = pair_tensors(base, tuned)
    assert {p.name: p.tuned_name for p in r.pairs} == {
        "model.layers.0.mlp.up_proj.weight": "model.language_model.layers.0.mlp.up_proj.weight",
        "visual.blocks.0.attn.qkv.weight": "model.visual.blocks.0.attn.qkv.weight",
        "lm_head.weight": "lm_head.weight",
    }
    assert set(kinds(r).values()) == {"aliased"}


def test_llava_old_and_new_layout() -> None:
    assert canonical_name("language_model.model.layers.3.self_attn.q_proj.weight") == canonical_name(
        "model.language_model.layers.3.self_attn.q_proj.weight"
    )
    assert canonical_name("language_model.lm_head.weight") == "lm_head.weight"
    assert canonical_name("module._orig_mod.model.norm.weight") == "model.norm.weight"


def test_ambiguous_alias_is_reported_not_guessed() -> None:
    base = infos({"model.layers.0.x.weight": (2,)})
    tuned = infos({"model.language_model.layers.0.x.weight": (2,), "language_model.model.layers.0.x.weight": (2,)})
    r = pair_tensors(base, tuned)
    assert r.pairs == []
    assert set(r.mismatches["kind"]) == {"ambiguous"}


def test_tied_head_is_not_missing() -> None:
    base = infos({"model.embed_tokens.weight": (8, 2), "lm_head.weight": (8, 2)})
    tuned = infos({"model.embed_tokens.weight": (8, 2)})
    r = pair_tensors(base, tuned)
    assert kinds(r) == {"lm_head.weight": "tied"}
    # ... unless the config says the embeddings are not tied
    r2 = pair_tensors(base, tuned, tuned_config={"tie_word_embeddings": False})
    assert kinds(r2) == {"lm_head.weight": "missing_in_tuned"}
    # and the other way round
    r3 = pair_tensors(tuned, base)
    assert kinds(r3) == {"lm_head.weight": "tied"}


def test_roles_attached() -> None:
    b = infos({"model.layers.2.mlp.down_proj.weight": (2, 4)})
    r = pair_tensors(b, dict(b))
    assert r.pairs[0].role.layer == 2 and r.pairs[0].role.module == "down_proj"
    assert r.summary() == {"pairs": 1}
