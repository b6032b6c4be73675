"""Evaluation runners over many generated assets, with the metrics of ``ayg.evaluate``:

* ``toy48`` — the ``toy`` preset over all 48 moving toy prompts (appearance and motion accuracy,
  overall and on the held-out pairs); ``python -m ayg.evaluation.toy48``;
* ``ablations`` — the paper's table 2 on the toy world; ``python -m ayg.evaluation.ablations``;
* ``records`` — the one-line-per-run result records both write (``docs/results/README.md``).
"""
