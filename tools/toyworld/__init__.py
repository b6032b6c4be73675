"""The toy world's ground truth and its trainer: ``scene`` (implicit solids, their motions and an
analytic ray-marching renderer), ``data`` (batch samplers for the teachers and classifiers) and
``train`` (the script that trains the weights shipped in ``ayg/toyworld/weights``).

The installed package keeps only what the ``toy`` preset and ``ayg eval`` load: the vocabulary
(``ayg.toyworld.vocab``), the nets (``ayg.toyworld.nets``) and their weights.
"""
