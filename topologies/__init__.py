"""The stock topologies, installed as the package ``shardc.stock``.

Only the ``.topo`` files matter: this module exists so that the folder is a package that
ships them as package data and that :func:`shardc.topology.loader.stock_dir` can find,
whether shardc runs from a checkout or from an installed wheel.
"""
