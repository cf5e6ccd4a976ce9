"""The benchmark harness: config and presets, the runner, the results store, tables and plots."""
