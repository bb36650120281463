"""What training, the SDK and the Rasa plugin share: bundle format, data, tokenization, results, metrics.

Nothing in here imports torch or transformers.
"""
