"""Training entry point (the Lightning/Hydra training app is not built yet)."""

import sys

if __name__ == "__main__":
    print(
        "frcnn: the training app (train.py with Hydra configs) is not available yet.\n"
        "The detector itself is ready: see the README section 'The detector in Python'."
    )
    sys.exit(1)
