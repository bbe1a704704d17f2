"""HF <-> Megatron checkpoint conversion; the layout rules live in `convert.layout`."""
