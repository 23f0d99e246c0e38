"""The ``vqldm`` command line: the only code that parses or names ``--flags``.

``main`` (the parser, one handler per command, the training commands), ``generate`` (``vqldm generate``),
``evaluate`` (``vqldm evaluate``). Each command checks its arguments once, here, then calls the library.
"""
