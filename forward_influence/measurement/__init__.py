"""Measurement: documents and words, KL, per-token signals, the ablation engine, the Fisher estimate,
the model's own generations, and :func:`forward_influence.measurement.run.measure` that runs them."""
