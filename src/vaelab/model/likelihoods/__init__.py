"""Decoder likelihoods p(x|z): from the decoder's output to log-probabilities and images."""
