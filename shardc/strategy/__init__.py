"""Sharding strategies: the per-op rules, the table of every node's legal shardings, and
how a choice of them plays through the graph.

* :mod:`~shardc.strategy.base` and :mod:`~shardc.strategy.rules`: the loop vocabulary
  rules speak and the graph walks they share;
* one module per op family (:mod:`~shardc.strategy.elementwise`, ``views``,
  ``products``, ``reductions``, ``gathers``, ``contrib``), each filing its rules in
  ``RULES`` for the ops :mod:`shardc.ir.opfamilies` lists;
* :mod:`~shardc.strategy.table`: :class:`StrategyTable` and :func:`build_table`;
* :mod:`~shardc.strategy.resolve`: followers derived, reshards listed.

It sits below the passes and the partitioner (``passes/strategies.py`` builds the table,
``shardc.partition`` prices choices through it) and above :mod:`shardc.sharding`, the
layout vocabulary, so neither of those imports the other.
"""

# every rule family files its rules in RULES on import: importing any part of the
# package files them all, so a table is never built from half the rules
from shardc.strategy import contrib, elementwise, gathers, products, reductions, views  # noqa: F401
