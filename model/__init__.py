"""Model side of protomask: networks, losses, training, push, explanations, metrics."""
