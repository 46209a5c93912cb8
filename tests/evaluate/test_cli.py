import json

import faiss
import numpy as np
import pytest

from real20m.evaluate.cli import build_parser, main, parse_request, run_evaluation
from real20m.evaluate.feature_io import write_legacy_features

GPU_BUILD = hasattr(faiss, "StandardGpuResources")
FAISS_GPUS = faiss.get_num_gpus() if GPU_BUILD else 0


def _features(tmp_path):
    rng = np.random.default_rng(0)
    gallery = rng.standard_normal((60, 8)).astype(np.float32)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    write_legacy_features(str(tmp_path / "q.feat"), np.arange(5) + 100, gallery[:5])
    write_legacy_features(str(tmp_path / "g.feat"), np.arange(60) + 5000, gallery)
    (tmp_path / "gt.txt").write_text("".join(f"video/images/1/{100 + i}_0.jpg\tgoods/images/2/{5000 + i}.jpg\n"
                                             for i in range(5)))
    return ["--query_features", str(tmp_path / "q.feat"), "--gallery_features", str(tmp_path / "g.feat"),
            "--gt_file", str(tmp_path / "gt.txt"), "--topk", "10", "--quiet"]


def _search_record(tmp_path, *flags):
    out = tmp_path / "eval"
    run_evaluation(parse_request(_features(tmp_path) + ["--output_dir", str(out), *flags]))
    return json.load(open(out / "metrics.json"))["search"]


def test_use_gpu_parses_auto_always_never_in_any_case():
    parse = build_parser().parse_args
    required = ["--query_features", "q", "--gallery_features", "g", "--gt_file", "gt", "--output_dir", "o"]
    assert parse(required).use_gpu == "auto"
    assert [parse(required + ["--use_gpu", word]).use_gpu for word in ("ALWAYS", "never", "Auto")] == \
        ["always", "never", "auto"]
    with pytest.raises(SystemExit):
        parse(required + ["--use_gpu", "sometimes"])


def test_metrics_json_records_device_faiss_build_and_factory(tmp_path):
    saved = _search_record(tmp_path, "--use_gpu", "never")
    assert saved["index"] == "Flat" and saved["use_gpu"] == "never"
    assert saved["device"] == "cpu" and saved["num_gpus"] == 0 and saved["device_note"] is None
    assert saved["faiss_version"] == faiss.__version__ and saved["faiss_build"] == ("gpu" if GPU_BUILD else "cpu")


def test_metrics_json_with_auto_records_what_ran_and_why(tmp_path):
    saved = _search_record(tmp_path, "--use_gpu", "auto", "--index", "IVF2,Flat", "--nprobe", "2",
                           "--train_size", "60")
    assert saved["index"] == "IVF2,Flat"
    if FAISS_GPUS:
        assert saved["device"] == "cuda" and saved["num_gpus"] == 1 and saved["device_note"] is None
    else:
        assert saved["device"] == "cpu" and saved["num_gpus"] == 0
        assert saved["device_note"].startswith("--use_gpu auto: searching on the CPU because")


@pytest.mark.skipif(FAISS_GPUS > 0, reason="this machine can search on a GPU")
def test_use_gpu_always_without_gpu_faiss_fails_in_one_line_before_loading(tmp_path, capsys):
    missing = str(tmp_path / "not-there")
    with pytest.raises(SystemExit) as exit_info:
        main(["--query_features", missing, "--gallery_features", missing, "--gt_file", missing,
              "--output_dir", str(tmp_path / "eval"), "--use_gpu", "always", "--quiet"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --use_gpu always: ")
    expected = "pip install -e '.[gpu]' (faiss-gpu-cu12)" if not GPU_BUILD else "sees no GPU"
    assert expected in err
    assert not (tmp_path / "eval").exists()
