"""R2I data synthesis: stages 1-7 of the method, one module per stage.

Each stage reads the previous stage's table for one shard, does its image work and model calls,
and writes one table in which every item is either ``kept`` or ``dropped`` with a reason, so the
funnel can be rebuilt from the files alone.
"""
