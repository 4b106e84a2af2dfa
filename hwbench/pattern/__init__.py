"""Gate patterns: which channels of each gated block run (the file format, summarise, synthesise)
and the MACs a pattern runs."""
