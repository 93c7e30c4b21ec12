"""Docker Model Runner's management routes: models in the store, loads, configuration."""
