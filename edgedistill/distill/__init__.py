"""Knowledge distillation: losses (a registry), feature taps and the training loop."""
