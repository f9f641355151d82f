"""promptserve training: datasets, few-shot sampling, the training loop, evaluation, the CLI."""
