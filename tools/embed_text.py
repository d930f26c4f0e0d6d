"""Compute frozen OpenCLIP text embeddings of class names (same as `lcmsm-embed-text`).

Example (the paper's embeddings):
    python tools/embed_text.py --classes cityscapes --model ViT-H-14 \
        --pretrained laion2b_s32b_b79k --out text/cityscapes_vith14.npz
"""

import sys

from lcmsm_jax import cli

if __name__ == "__main__":
    sys.exit(cli.run("lcmsm-embed-text", sys.argv[1:]))
