"""Training: the LightningModule, the staged fits, fine-tuning, the feature store."""
