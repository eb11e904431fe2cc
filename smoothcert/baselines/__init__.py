"""Deterministic certified baselines to compare smoothing with (paper App. H.1, Figure 13).

* :mod:`.bound`: a guaranteed upper bound on a network's L2 Lipschitz constant (exact float64
  spectral norms per layer) and the Lipschitz-margin radius ``margin / (sqrt(2) L)`` (Tsuzuku,
  Sato & Sugiyama, NeurIPS 2018);
* :mod:`.train`: Lipschitz-margin training of 1-Lipschitz networks (:mod:`smoothcert.models.lipschitz`);
* :mod:`.attack`: L2 PGD on a deterministic network, for soundness checks;
* :mod:`.run`: certify a data set, rows in the certify log's columns.

This sub-package sits above ``models`` (it bounds their layers) and below ``io``: it imports
``core``, ``runtime`` and ``models`` only.
"""

__all__: list[str] = []
