"""Layer 0: what every stage shares and nothing of Vigil's own it may import: error types
and the protocols stages meet at (the agent's face to its front ends, a loaded hook)."""
