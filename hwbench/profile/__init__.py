"""Device profiles: measuring one (``build``), the latency predictor read from it
(``predictor``), finding the one that describes a device (``locate``), and the per-mode speedup
of one pattern (``speedup``)."""
