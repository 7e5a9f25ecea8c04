"""Training plans and data splitters plugged into scvi-tools' TrainRunner."""
