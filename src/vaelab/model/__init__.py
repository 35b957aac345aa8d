"""The VAE as plain torch, composed from parts: networks, likelihoods, priors and objectives.

Nothing here imports Lightning. Each part lives in its own module under ``nets/``,
``likelihoods/``, ``priors/`` or ``objectives/`` and is named in config by a ``_target_``
spec (``conf/net``, ``conf/likelihood``, ``conf/prior``, ``conf/objective``);
:func:`vaelab.model.parts.build` instantiates a spec with the context it needs.
"""
