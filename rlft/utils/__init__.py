"""Small shared helpers: seeding, metric logging, atomic checkpoints."""
