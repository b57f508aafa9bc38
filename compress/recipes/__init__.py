"""Recipes: a declared pipeline (:mod:`.schema`), planned into content-keyed jobs (:mod:`.plan`), run with a cache
in the run directory (:mod:`.execute`), and written back from an artifact's lineage (:mod:`.lineage`).

``from compress import run_recipe, read_recipe`` are the entry points; this package imports nothing eagerly.
"""
