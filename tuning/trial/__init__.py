"""What one Ray Tune trial runs: the network, its weights, its training loop, its memory cap."""
