"""How :func:`pyrofail.fit` trains: the resolved configuration (:mod:`.config`), the batched
objects it builds (:mod:`.build`), the paper's initialisation (:mod:`.init`), the loop's state
(:mod:`.state`) and the SVI loop over vectorised restarts (:mod:`.loop`). The procedures that
compose them are registered in :mod:`pyrofail.procedures`.
"""
