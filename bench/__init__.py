"""The project's benchmarks, one module per script, each with ``main(argv) -> int``.

Run one from the repository root as ``python -m bench.NAME`` or ``python bench/NAME.py`` (the
editable install makes ``bench`` importable; no script edits ``sys.path``). What they share
(options, asset checks, the machine line, result files) is in :mod:`bench.common`; the
generation benches' timing and top-1 helpers are in :mod:`bench.evaluation`.
"""
