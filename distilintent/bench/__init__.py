"""``distilintent bench``: latency, throughput, cold start and memory of a bundle's variants beside
the PyTorch baselines. Kept import-light: torch is only loaded for the torch/pipeline rows."""
