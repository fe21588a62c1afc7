"""Fitting model parameters to observations (see the inference issue); nothing public yet."""
