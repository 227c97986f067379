"""One trial: data, metrics, the PEFT LoRA wrap and its counts, the LightningModule, the fit, the export."""
