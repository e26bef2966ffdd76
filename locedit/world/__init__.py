"""The synthetic shapes world: scenes, exact renders, captions, edits with ground truth, the oracle."""
