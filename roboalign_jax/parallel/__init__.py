"""Device mesh, logical-axis sharding rules and sharded train-step construction."""
