"""Priors p(z) over the top stochastic layer."""
