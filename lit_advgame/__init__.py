"""lit_advgame: a PyTorch Lightning package for the game-theoretic study of adversarial
robustness and transferability (interactions, IR attacks, robust training)."""

__version__ = "0.1.0"
