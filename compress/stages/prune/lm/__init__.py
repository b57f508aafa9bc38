"""A causal LM's path through prune: its scores, structure (GQA-aware heads, FFN, layers), vocabulary and
perplexity."""
