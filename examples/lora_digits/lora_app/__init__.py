"""Transfer learning across silos: a digits MLP pretrained on 0–4, fine-tuned on 5–9 with LoRA."""
