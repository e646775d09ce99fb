"""Training and evaluation: mesh and sharding rules, optimizer, train state,
jitted steps, Orbax checkpoints, logging, and multi-view evaluation."""
