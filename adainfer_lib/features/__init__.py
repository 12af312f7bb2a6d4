"""Per-layer features of a traced task: the online feature names and label features (``online``), the tidy
feature table (``table``), and how well each feature tells "stop" from "go on" (``study``)."""

from .online import (
    FULL_VOCAB_FEATURES,
    GENERATION_FEATURES,
    LABEL_FEATURES,
    LABEL_SCHEMES,
    ONLINE_FEATURES,
    UNIT_INTERVAL_FEATURES,
    OnlineFeatures,
    label_features,
    online_features,
)
from .study import (
    feature_auc,
    feature_correlations,
    lens_check_cost,
    per_layer_auc,
    permutation_importance_table,
    split_by_example,
)
from .table import feature_table

__all__ = ["ONLINE_FEATURES", "FULL_VOCAB_FEATURES", "LABEL_FEATURES", "GENERATION_FEATURES", "UNIT_INTERVAL_FEATURES",
           "LABEL_SCHEMES", "label_features", "online_features", "OnlineFeatures",
           "feature_table", "feature_auc", "per_layer_auc", "feature_correlations", "permutation_importance_table",
           "split_by_example", "lens_check_cost"]
