"""Train the QCD cross-domain embedding model, or with --evaluate write the features of a test file.

    python main_cross_domain_emb.py --config configs/tiny.yaml --data_root Dataset --output_dir outputs
    torchrun --nproc_per_node 8 main_cross_domain_emb.py --config configs/paper.yaml --data_root Dataset
    python main_cross_domain_emb.py --evaluate --resume outputs/checkpoints/last.pth.tar \
        --test_file Dataset/test_file/goods_gallery.txt --output_dir outputs/eval/video2goods/gallery

The original release's flag names (--train_file, --goods_img_root, --clip_length, --is_xbm, ...)
are accepted; see `--help` or real20m/config/. The code is real20m/cli/train.py (the installed
command `real20m-train`); this script keeps the original command lines working from a checkout.
"""
from real20m.cli.train import main

if __name__ == "__main__":
    main()
