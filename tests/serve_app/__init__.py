"""Ray Serve application over real HTTP (was ``tests/test_serve.py``): one Serve app for the whole package.

Named ``serve_app``, not ``serve``: pytest imports this package with ``tests/`` first on ``sys.path``
(rootdir ``prepend`` import mode, ``tests/`` has no ``__init__.py``), so a ``tests/serve`` package would
shadow the application package ``serve``.
"""
