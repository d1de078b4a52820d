"""The project's WSGI app with the candidate changes in BENCH_EXPERIMENTS applied (``--web-experiments`` only)."""

from project.wsgi import application

from . import experiments

experiments.apply_from_env()

__all__ = ["application"]
