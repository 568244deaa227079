"""The agent's reconcilers: `plan` decides (pure), one module per kind applies, `runner` drives them level-based."""
