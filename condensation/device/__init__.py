"""How a run uses its machine, kept apart from the methods' arithmetic: `parallel` (torchrun's process group,
each rank's share of the work and the collectives), `graphs` (CUDA-graph capture and replay of a fixed-shape
step) and `footprint` (the memory a run will need, checked before it starts). On a CPU run each is a no-op.
"""
