"""The CNN-encoder quality study of docs/quality.md: ``python3 -m bench.studies.quality.run_recipe``,
``.report``, ``.diagnose`` and ``.halves`` (see each module's docstring)."""
