"""Training sidecar for the identity experts: data, trainer, synthesis. The app never imports it."""
