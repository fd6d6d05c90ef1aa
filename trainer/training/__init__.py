"""One update, one validation, one loop: what happens to the model while it trains."""
