"""Tools around text models: the token-sequence signal/distractor data, ``pk.plot.tokens`` and
``pattern-keras analyze`` on a text file."""

import csv
import importlib.util
import os
import types

import keras
import numpy as np
import pytest
from conftest import PASS, assert_close

import pattern_keras as pk
from pattern_keras import _cli_text
from pattern_keras.datasets import signal_distractor_tokens

# --- the token-sequence signal/distractor data ---------------------------------------------------


def test_token_data_is_signal_plus_distractors_plus_noise():
    data = signal_distractor_tokens(400, length=12, dim=6, signal_tokens=2, noise=0.05, seed=3)
    assert data.x.shape == data.signal.shape == (400, 12, 6)
    assert data.support.shape == (400, 12) and np.all(data.support.sum(axis=1) == 2)
    distractors = np.tensordot(data.distractor_amplitude, data.distractor_patterns, axes=1)
    residual = data.x - data.signal - distractors
    assert abs(residual.std() - 0.05) < 0.005  # only the noise is left
    # The signal: a_s·y at the support, 0 elsewhere; its sign is the class.
    expected = (
        data.signal_amplitude[:, None, None] * data.support[..., None] * data.signal_direction
    )
    assert_close(data.signal, expected, PASS)
    np.testing.assert_array_equal(data.labels == 1, data.signal_amplitude > 0)
    np.testing.assert_allclose(np.linalg.norm(data.signal_direction), 1.0, rtol=1e-6)
    # Distractors: louder, overlapping a_s (cosine 0.6), at every position.
    for pattern in data.distractor_patterns:
        direction = pattern[0] / np.linalg.norm(pattern[0])
        np.testing.assert_allclose(direction @ data.signal_direction, 0.6, rtol=1e-5)
        assert np.all(np.linalg.norm(pattern, axis=1) >= 0.5 * 2.0 - 1e-5)


def test_token_data_shares_patterns_across_seeds_and_is_reproducible():
    a, b = signal_distractor_tokens(10, seed=1), signal_distractor_tokens(10, seed=2)
    np.testing.assert_array_equal(a.signal_direction, b.signal_direction)
    np.testing.assert_array_equal(a.distractor_patterns, b.distractor_patterns)
    assert not np.array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.x, signal_distractor_tokens(10, seed=1).x)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n=0), "n must be"),
        (dict(n=5, signal_tokens=20), "signal_tokens must be"),
        (dict(n=5, correlation=1.0), "correlation must be"),
        (dict(n=5, dim=1), "dim >= 2"),
    ],
)
def test_token_data_refuses_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        signal_distractor_tokens(**kwargs)


# --- pk.plot.tokens ----------------------------------------------------------------------------

VOCAB = ["[PAD]", "the", "movie", "was", "great", "bad", "<b>"]


def test_tokens_colours_scores_over_the_pieces():
    scores = np.array([[0.0, 1.0, -1.0, 0.5]])
    ids = np.array([[1, 2, 6, 4]])
    shown = pk.plot.tokens(scores, ids, VOCAB, title="LRP")
    assert shown.pieces == [["the", "movie", "<b>", "great"]]
    white, red, blue, light = shown.colors[0]
    np.testing.assert_allclose(white, 1.0, atol=0.01)  # 0 is the centre of "bwr"
    assert red[0] > 0.9 and red[2] < 0.1 and blue[2] > 0.9 and blue[0] < 0.1
    assert 0.4 < light[1] < 0.6  # half the largest score: half-way to red
    html = shown._repr_html_()
    assert "&lt;b&gt;" in html and "<b>LRP</b>" in html and 'title="-1"' in html
    assert "\x1b[38;2;0;0;0;48;2;" in str(shown) and "movie" in str(shown)


def test_tokens_leaves_out_masked_positions_and_checks_shapes(tmp_path):
    scores = np.array([0.2, -0.4, 0.0])
    shown = pk.plot.tokens(scores, [1, 3, 0], VOCAB, mask=[True, True, False])
    assert shown.pieces == [["the", "was"]]
    path = shown.save(tmp_path / "page" / "tokens.html")
    assert "<!DOCTYPE html>" in open(path, encoding="utf-8").read()
    with pytest.raises(ValueError, match="token_ids shaped like them"):
        pk.plot.tokens(np.zeros((2, 3)), np.zeros((2, 4), int), VOCAB)
    with pytest.raises(ValueError, match="preprocessor"):
        pk.plot.tokens(scores, "the movie was", None)


@pytest.mark.skipif(importlib.util.find_spec("keras_hub") is None, reason="needs keras-hub")
def test_tokens_with_a_keras_hub_preprocessor_and_text():
    import keras_hub

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "movie", "was", "great"]
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocab)
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(tokenizer, sequence_length=8)
    shown = pk.plot.tokens(np.arange(8.0), "the movie was great", preprocessor)
    assert shown.pieces == [["[CLS]", "the", "movie", "was", "great", "[SEP]"]]  # no padding
    np.testing.assert_array_equal(shown.scores[0], np.arange(6.0))


# --- pattern-keras analyze on a text file -----------------------------------------------------


class _WordPreprocessor:
    """Splits lines into words, looks them up in ``VOCAB``, pads to ``length``."""

    def __init__(self, length=6):
        self.length = length

    def __call__(self, lines):
        ids = np.zeros((len(lines), self.length), "int32")
        for row, line in zip(ids, lines):
            words = [VOCAB.index(w) for w in line.split()][: self.length]
            row[: len(words)] = words
        return {"token_ids": ids, "padding_mask": (ids != 0).astype("int32")}

    def id_to_token(self, i):
        return VOCAB[i]


def _text_classifier():
    keras.utils.set_random_seed(0)
    ids = keras.Input((6,), dtype="int32", name="token_ids")
    mask_input = keras.Input((6,), dtype="int32", name="padding_mask")
    h = keras.layers.Embedding(len(VOCAB), 4)(ids)
    h = keras.layers.Dense(5, activation="relu")(h)
    h = keras.layers.GlobalAveragePooling1D()(h, mask=keras.ops.cast(mask_input, "bool"))
    model = keras.Model([ids, mask_input], keras.layers.Dense(2)(h))
    model.preprocessor = _WordPreprocessor()
    return model


def test_analyze_text_writes_token_scores_as_csv_and_html(tmp_path):
    model = _text_classifier()
    text = tmp_path / "reviews.txt"
    text.write_text("the movie was great\n\nthe movie was bad\n", encoding="utf-8")
    args = types.SimpleNamespace(
        inputs=str(text), output=str(tmp_path / "out"), neuron=None, batch_size=8, quiet=True
    )
    analyzers = {"lrp.z": pk.LRPZ(model), "gradient": pk.Gradient(model)}
    scores = _cli_text.analyze_text(args, model, lambda m: analyzers, lambda message: None)
    x = model.preprocessor(["the movie was great", "the movie was bad"])
    inputs = [x["token_ids"], x["padding_mask"]]
    assert_close(scores["lrp.z"], pk.LRPZ(model).analyze(inputs, verbose=0)[0], PASS)
    with open(os.path.join(args.output, "tokens.csv"), encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["example", "position", "token_id", "piece", "lrp.z", "gradient"]
    assert len(rows) == 1 + 8  # four words in each line, no padding
    assert rows[4][:4] == ["0", "3", "4", "great"]
    assert float(rows[4][4]) == pytest.approx(float(scores["lrp.z"][0, 3]), rel=1e-5)
    page = open(os.path.join(args.output, "tokens.html"), encoding="utf-8").read()
    assert page.count("great") == 2 and "lrp.z" in page
    assert set(np.load(os.path.join(args.output, "explanations.npz"))) == {"lrp.z", "gradient"}


def test_analyze_text_needs_a_preprocessor(tmp_path):
    model = _text_classifier()
    del model.preprocessor
    with pytest.raises(_cli_text.TextInputError, match="saved with its preprocessor"):
        _cli_text.model_inputs(model, ["the movie"])
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(_cli_text.TextInputError, match="holds no text"):
        _cli_text.read_lines(str(empty))


@pytest.mark.skipif(importlib.util.find_spec("keras_hub") is None, reason="needs keras-hub")
def test_command_line_analyzes_a_text_file_with_a_saved_keras_hub_classifier(tmp_path):
    """A tiny BertTextClassifier saved with its preprocessor; one example per line."""
    import keras_hub

    from pattern_keras import cli

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "movie", "was", "great", "bad"]
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocab)
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(tokenizer, sequence_length=8)
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=len(vocab),
        num_layers=1,
        num_heads=1,
        hidden_dim=4,
        intermediate_dim=8,
        max_sequence_length=8,
    )
    classifier = keras_hub.models.BertTextClassifier(backbone, 2, preprocessor=preprocessor)
    path = str(tmp_path / "classifier.keras")
    classifier.save(path)
    lines = ["the movie was great", "the movie was bad"]
    (tmp_path / "reviews.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = str(tmp_path / "out")
    argv = ["analyze", path, str(tmp_path / "reviews.txt"), "-m", "gradient", "-o", out, "-q"]
    assert cli.main(argv) == 0
    with open(os.path.join(out, "tokens.csv"), encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert [r[3] for r in rows[1:7]] == ["[CLS]", "the", "movie", "was", "great", "[SEP]"]
    assert len(rows) == 1 + 12  # six pieces a line, padding left out
    x = preprocessor(lines)
    expected = pk.Gradient(classifier).analyze([x[t.name] for t in classifier.inputs], verbose=0)
    assert expected[0] is None and expected[1] is None  # padding mask, segment ids
    scores = np.load(os.path.join(out, "explanations.npy"))
    assert_close(scores, expected[2], PASS)
    assert float(rows[1][4]) == pytest.approx(float(scores[0, 0]), rel=1e-5)
