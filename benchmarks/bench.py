"""Time the NumPy GPT's training step against its PyTorch twin: the same as `python -m oracle bench`.

    python benchmarks/bench.py --record             # small and large configs, float32 and float64, both paths
    python benchmarks/bench.py --config large --dtype float32 --kernels fast --profile
    python benchmarks/bench.py --config mine:d=256,layers=4,heads=4,T=128,batch=8 --out /tmp/mine

Prints the table; `--record` updates benchmarks/results/bench.md and bench.json (see
docs/performance.md), `--out PREFIX` writes PREFIX.md and PREFIX.json. Needs torch.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from oracle.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
