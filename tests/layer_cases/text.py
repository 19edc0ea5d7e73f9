"""Coverage cases of the text helper (issue 20, item 5): embedding lookups.

An input of token ids is explained at its embedding vectors, so its references are taken
there: :func:`check_token_model` cuts the model after the lookup (the vectors become a float
input), runs :func:`~layer_cases.check_model` on the cut model, and checks that every
analyzer's full maps on the ids (``per_token=False``) equal those of the cut model, and that its
per-token scores are their sum (attributions) or L2 norm (signals) over the embedding axis.

``check_model`` calls :func:`check_token_model` for a case whose ``SmallModel`` is a
:class:`TokenModel` (integer ids: there is no tape gradient with respect to them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import keras
import numpy as np
from keras import layers as L

from layer_cases import LayerCase, SmallModel, add, check_model

VOCABULARY, LENGTH, WIDTH = 7, 5, 3


@dataclasses.dataclass(frozen=True, eq=False)
class TokenModel(SmallModel):
    """A smallest model on token ids; ``split(model) -> (embed, cut)``: the model up to the
    vectors the ids are explained at, and the rest of it from those vectors (the same layers,
    called on a new float input)."""

    split: Callable[[keras.Model], tuple[keras.Model, keras.Model]] | None = None

    def check(self, index: int = 0, rtol: float = 1e-5) -> dict[str, np.ndarray]:
        """:func:`check_token_model` (what ``check_model`` runs for a token model)."""
        return check_token_model(self, index, rtol)


def _ids(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, VOCABULARY, (3, LENGTH)).astype("int32")


def _embedding_model() -> keras.Model:
    keras.utils.set_random_seed(0)
    ids = keras.Input((LENGTH,), dtype="int32")
    h = L.Embedding(VOCABULARY, WIDTH, name="lookup")(ids)
    h = L.Dense(4, bias_initializer="random_normal", name="d1")(h)
    h = L.GlobalAveragePooling1D(name="pool")(h)
    out = L.Dense(2, bias_initializer="random_normal", name="out")(h)
    return keras.Model(ids, out, name="embedding")


def _split_chain(model: keras.Model) -> tuple[keras.Model, keras.Model]:
    """For a chain ``lookup → layers...``: the lookup alone, and the layers after it."""
    ids = keras.Input((LENGTH,), dtype="int32")
    vectors = keras.Input((LENGTH, WIDTH))
    h = vectors
    for layer in model.layers[2:]:
        h = layer(h)
    return keras.Model(ids, model.get_layer("lookup")(ids)), keras.Model(vectors, h)


def _reversible_model() -> keras.Model:
    """Tied input and output embeddings: the lookup, and ``reverse=True`` as the logits."""
    keras.utils.set_random_seed(0)
    tied = L.ReversibleEmbedding(VOCABULARY, WIDTH, name="lookup")
    ids = keras.Input((LENGTH,), dtype="int32")
    h = L.GlobalAveragePooling1D(name="pool")(tied(ids))
    h = L.Dense(WIDTH, bias_initializer="random_normal", name="d1")(h)
    return keras.Model(ids, tied(h, reverse=True), name="reversible_embedding")


def _split_reversible(model: keras.Model) -> tuple[keras.Model, keras.Model]:
    tied = model.get_layer("lookup")
    ids = keras.Input((LENGTH,), dtype="int32")
    vectors = keras.Input((LENGTH, WIDTH))
    h = model.get_layer("d1")(model.get_layer("pool")(vectors))
    return keras.Model(ids, tied(ids)), keras.Model(vectors, tied(h, reverse=True))


def check_token_model(
    spec: TokenModel, index: int = 0, rtol: float = 1e-5
) -> dict[str, np.ndarray]:
    """Every analyzer on the ids equals the same analyzer on the model cut after the lookup."""
    from conftest import EVERY_ANALYZER, assert_close

    model = spec.build()
    ids = (spec.data or _ids)(np.random.default_rng(0))
    embed, cut = spec.split(model)
    vectors = np.asarray(embed(ids))
    cut_results = check_model(
        SmallModel(build=lambda: cut, data=lambda rng: vectors, gated=spec.gated), index, rtol
    )
    from layer_cases import _patterns_from_kernels

    results = {}
    for cls in EVERY_ANALYZER:
        kwargs = {"neuron_selection_mode": "index"}
        if cls.__name__ == "IntegratedGradients":
            kwargs["steps"] = 4
        elif cls.__name__ == "SmoothGrad":
            kwargs.update(samples=2, noise_scale=0.0)
        analyzer = cls(model, **kwargs)
        if analyzer.needs_patterns:
            analyzer.set_patterns(
                _patterns_from_kernels(analyzer, ones=cls.__name__ != "PatternNet")
            )
        selection = np.full(len(ids), index, np.int32)
        full = analyzer.analyze(ids, selection, per_token=False, verbose=0)
        expected = cut_results[cls.__name__]
        if cls.__name__ == "DeepTaylor":  # the box at the vectors: the table's range
            table = np.asarray(embed.layers[-1].embeddings)
            box = dict(low=table.min(0), high=table.max(0), neuron_selection_mode="index")
            expected = cls(cut, **box).analyze(vectors, selection, verbose=0)
        assert_close(full, expected, rtol, err_msg=f"{cls.__name__} on {model.name}")
        per_token = analyzer.analyze(ids, selection, verbose=0)
        reduced = (
            np.linalg.norm(expected, axis=-1)
            if analyzer.token_reduction == "norm"
            else expected.sum(axis=-1)
        )
        assert_close(per_token, reduced, rtol, err_msg=f"{cls.__name__} per token")
        results[cls.__name__] = full
    return results


add(
    LayerCase(
        "Embedding", "supported", "text", TokenModel(_embedding_model, _ids, split=_split_chain)
    ),
    LayerCase(
        "ReversibleEmbedding",
        "supported",
        "text",
        TokenModel(_reversible_model, _ids, split=_split_reversible),
    ),
)
