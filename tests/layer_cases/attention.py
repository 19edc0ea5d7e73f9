"""Coverage cases of the attention helper (issue 20, item 4): attention layers and EinsumDense.

A stub: each class is listed as owned by the attention helper, who replaces these entries with
``LayerCase(name, "supported", "attention", SmallModel(...))`` (or a refusal) as they land.
"""

from layer_cases import LayerCase, add

add(
    *(
        LayerCase(name, "owned", "attention", reason="attention helper, issue 20 item 4")
        for name in (
            "MultiHeadAttention",
            "GroupedQueryAttention",
            "Attention",
            "AdditiveAttention",
            "EinsumDense",
        )
    )
)
