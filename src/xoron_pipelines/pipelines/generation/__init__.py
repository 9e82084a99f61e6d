"""``generation``: image and video generators (MoE-DiT, flow matching) conditioned on the frozen LLM."""
