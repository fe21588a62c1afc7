"""The shipped presets: run, sweep and fit configs with the data they read.

This folder is where a checkout's users find them (``synovia run configs/knee2d.toml``); an installed
synovia holds the same files as the package ``synovia_presets`` (pyproject.toml maps this folder onto
it), so that ``synovia run knee2d`` works from any folder. ``synovia configs list`` names them.
"""
