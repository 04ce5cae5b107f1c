"""``fi-distill``: a per-token scorer learned from Forward Influence (docs/design.md §6.7).

:mod:`.data` turns ``fi-measure`` runs into units of candidates with their causal
features and FI targets; :mod:`.models` fits the scorers (a linear model with a
listwise loss, scikit-learn's histogram gradient boosting, LightGBM's lambdarank)
and writes them in the torch-free format of :mod:`forward_influence.scoring`;
:mod:`.evaluate` judges them by document; :mod:`.train` selects a model by
cross-validation and is what the CLI and ``distill()`` run.
"""
