"""Coverage cases of the text helper (issue 20, item 5): embeddings of integer inputs.

A stub: each class is listed as owned by the text helper, who replaces these entries with
``LayerCase(name, "supported", "text", SmallModel(...))`` (or a refusal) as they land.
"""

from layer_cases import LayerCase, add

add(
    *(
        LayerCase(name, "owned", "text", reason="text helper, issue 20 item 5")
        for name in ("Embedding", "ReversibleEmbedding")
    )
)
