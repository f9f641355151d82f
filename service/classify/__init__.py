"""The classify path: decode images, batch them across requests, run the engine, score labels."""
