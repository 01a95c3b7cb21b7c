"""The exported model: the bundle retrained on every row, its folder format and model card, prediction, explanation
and external validation."""
