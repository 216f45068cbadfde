"""Building blocks: backbones, heads, momentum (EMA) and memories (queue, bank)."""
