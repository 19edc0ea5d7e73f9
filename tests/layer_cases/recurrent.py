"""Coverage cases of the recurrent helper (issue 21): recurrent layers, their cells and the
wrappers that loop a layer over time.

A stub: each class is listed as owned by the recurrent helper, who replaces these entries with
``LayerCase(name, "supported", "recurrent", SmallModel(...))`` (or a refusal) as they land.
"""

from layer_cases import LayerCase, add

add(
    *(
        LayerCase(name, "owned", "recurrent", reason="recurrent helper, issue 21")
        for name in (
            "LSTM",
            "GRU",
            "SimpleRNN",
            "RNN",
            "Bidirectional",
            "TimeDistributed",
            "ConvLSTM1D",
            "ConvLSTM2D",
            "ConvLSTM3D",
            "LSTMCell",
            "GRUCell",
            "SimpleRNNCell",
            "StackedRNNCells",
        )
    )
)
