"""Transformers' largest layers through apply, export and load: embedding tables, the projections
of `nn.MultiheadAttention` (split into modules), and tied weights stored and counted once."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from engine.apply import ApplyConfig, apply_plan_
from engine.export import export, load, read_metadata
from predictors.size import size_report
from search_spaces import BitsConfig, LayerPlan, Plan, VQConfig, discover
from search_spaces.attention import SplitAttention


class TinyLM(nn.Module):
    """Token embeddings, two attention blocks (one inside a TransformerEncoderLayer) and an
    output projection tied to the embedding table, as language models have it."""

    def __init__(self, vocab: int = 200, width: int = 32):
        super().__init__()
        self.embed = nn.Embedding(vocab, width, padding_idx=0)
        self.attn = nn.MultiheadAttention(width, 4, batch_first=True)
        self.norm = nn.LayerNorm(width)
        self.encoder = nn.TransformerEncoderLayer(width, 4, 64, dropout=0.0, batch_first=True)
        self.decoder = nn.Linear(width, vocab)
        self.decoder.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        y = self.norm(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return self.decoder(self.encoder(x)).mean(1)


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    model = TinyLM().eval()
    ids = torch.randint(1, 200, (8, 12))
    return model, ids, discover(model, ids, model_name="tiny-lm")


def test_discovery_finds_the_table_the_projections_and_the_tie(lm):
    model, _, graph = lm
    assert graph.layers["embed"].kind == "embedding"
    assert graph.layers["embed"].tied == ("decoder",)
    for name in ("attn.in_proj", "attn.out_proj", "encoder.self_attn.in_proj"):
        assert name in graph.layers
    kept = {m.name: m for m in graph.kept}
    assert "tied to 'embed'" in kept["decoder"].reason
    assert kept["decoder"].bits == 32 * 200  # its bias alone: the weight is counted once
    assert graph.total_params == sum(p.numel() for p in model.parameters())
    assert isinstance(model.attn, nn.MultiheadAttention)  # the user's model is unchanged


@pytest.mark.parametrize("weights", ["bits4", "vq"])
def test_round_trip_is_exact_and_the_tied_weight_is_stored_once(lm, weights, tmp_path):
    base, ids, graph = lm
    inner = [n for n in graph.layers if n != graph.classifier]

    def config(name):
        if weights == "bits4":
            return BitsConfig(bits=4)
        return VQConfig(k=32, m=4 if graph.layers[name].row_length % 4 == 0 else 1)

    plan = Plan({n: LayerPlan(weights=config(n)) for n in inner}, fingerprint=graph.fingerprint)
    model = copy.deepcopy(base)
    apply_plan_(model, plan, example_inputs=ids, config=ApplyConfig(progress=False))
    assert isinstance(model.attn, SplitAttention)
    assert model.decoder.weight_source is model.embed.weight_source
    report = export(model, tmp_path / "lm.cpz")
    meta = read_metadata(tmp_path / "lm.cpz")
    assert meta["layers"]["decoder"]["tied_to"] == "embed"
    predicted = size_report(plan, graph).total_bits / 8
    assert 0 <= report.payload_bytes - predicted < max(report.packed_tensors, 1)
    loaded = load(tmp_path / "lm.cpz", model=copy.deepcopy(base))
    assert loaded.decoder.weight_source is loaded.embed.weight_source
    with torch.no_grad():
        assert torch.allclose(model(ids), loaded(ids), atol=1e-6)
        # compression moves the outputs, but less than their own size
        moved = ((model(ids) - base(ids)).norm() / base(ids).norm()).item()
    assert 0 < moved < 1


def test_split_attention_computes_what_multihead_attention_computes():
    torch.manual_seed(0)
    for batch_first in (True, False):
        attention = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
        split = SplitAttention(attention).eval()
        x = torch.randn(2, 5, 16) if batch_first else torch.randn(5, 2, 16)
        padding = torch.zeros(2, 5, dtype=torch.bool)
        padding[1, -2:] = True
        causal = torch.ones(5, 5, dtype=torch.bool).triu(1)
        for kwargs in (
            {},
            {"need_weights": False},
            {"key_padding_mask": padding},
            {"attn_mask": causal, "need_weights": False},
            {"attn_mask": causal, "key_padding_mask": padding, "average_attn_weights": False},
        ):
            expected, expected_weights = attention(x, x, x, **kwargs)
            out, weights = split(x, x, x, **kwargs)
            assert torch.allclose(out, expected, atol=1e-5), kwargs
            assert (weights is None) == (expected_weights is None)
            if weights is not None:
                assert torch.allclose(weights, expected_weights, atol=1e-6)
        memory = torch.randn_like(x)
        assert torch.allclose(
            split(x, memory, memory)[0], attention(x, memory, memory)[0], atol=1e-5
        )
