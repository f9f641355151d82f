"""The synthetic shapes world: scenes and captions, tasks built from them, and the `mini`
backbone's pretraining."""
