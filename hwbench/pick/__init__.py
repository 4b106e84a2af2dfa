"""Picking what to train for a latency target: the t_d rule on a profile (``t_d``) and the
targets a run trains against (``target``)."""
