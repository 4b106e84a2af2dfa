"""From a trained run to the network delivered: deploy it (``network``), measure it (``verify``),
search the pattern until it lands (``trim``), judge it (``verdict``, ``final``), export it, and the
alternatives it is held against (``baseline``: thin; ``prune``; ``compare``). ``pipeline`` chains
the steps for the CLI."""
