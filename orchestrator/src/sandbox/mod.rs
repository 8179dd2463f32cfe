//! Sandboxes: one container per episode, a persistent shell inside it, file access and orphan cleanup.
