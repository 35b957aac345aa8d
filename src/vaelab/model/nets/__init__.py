"""Encoder/decoder networks. A network spec builds both halves from the shapes the model asks for."""
