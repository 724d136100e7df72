"""Train the DDPM: `python diffusers/train_diffusion.py --help` (also from inside diffusers/)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))  # runs without installing

from sdlab.cli.train_diffusion import main  # noqa: E402

if __name__ == "__main__":
    main()
