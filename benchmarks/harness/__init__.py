"""What the benchmark scripts share, one module per subject (scripts import each name from its module):

- :mod:`~benchmarks.harness.timing`: timed calls after a warm-up, side-by-side rounds of several routes (the order
  flipped every round), medians with their spread;
- :mod:`~benchmarks.harness.results`: where things live (the repository, results/, the cache, ../shared), host facts
  and versions, the results-file writer, phases that save as they go, resumable builds;
- :mod:`~benchmarks.harness.data`: data subsets, accuracy through a runtime adapter, scored text windows;
- :mod:`~benchmarks.harness.lm`: llama.cpp itself as the generators' anchor;
- :mod:`~benchmarks.harness.training`: training through the library's one loop (``TrainLoop``), nothing kept on disk;
- :mod:`~benchmarks.harness.teachers`: the SST-2 teacher the encoder benchmarks compress;
- :mod:`~benchmarks.harness.cnns`: real ImageNet CNNs from offline wheels, and the photos their benchmarks use;
- :mod:`~benchmarks.harness.heldout`: the CNN benchmarks' held-out split of photo views (folds by scene).

A script puts the repository on ``sys.path`` (``Path(__file__).resolve().parents[2]``) and imports
``benchmarks.harness.<module>``."""
