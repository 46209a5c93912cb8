import av
import numpy as np
import pytest
from PIL import Image

from real20m.cli.extract_frames import VideoDecodeError, evenly_spaced, extract_video, main

NUM_FRAMES = 10
FPS = 10


def write_test_video(path, num_frames=NUM_FRAMES, fps=FPS):
    """A 32x32 mpeg4 clip whose frame i is flat grey at brightness 20 + 20 * i."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        for i in range(num_frames):
            pixels = np.full((32, 32, 3), 20 + 20 * i, np.uint8)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def brightness(path):
    return float(np.asarray(Image.open(path).convert("L")).mean())


def frame_files(folder, pid):
    return sorted(p.name for p in folder.glob(f"{pid}_*.jpg"))


def test_evenly_spaced_includes_both_ends_and_caps_at_total():
    assert evenly_spaced(10, 4) == [0, 3, 6, 9]
    assert evenly_spaced(3, 8) == [0, 1, 2]


def test_num_frames_picks_evenly_spaced_frames(tmp_path):
    video = tmp_path / "1000012.mp4"
    write_test_video(video)
    written = extract_video(video, tmp_path / "images", num_frames=4)

    folder = tmp_path / "images" / "12"
    assert written == 4
    assert frame_files(folder, 1000012) == [f"1000012_{k}.jpg" for k in range(4)]
    # frames 0, 3, 6, 9 of the clip, recognisable by their brightness
    for k, index in enumerate([0, 3, 6, 9]):
        assert brightness(folder / f"1000012_{k}.jpg") == pytest.approx(20 + 20 * index, abs=8)
    assert brightness(folder / "1000012.jpg") == pytest.approx(20, abs=8)  # cover = first frame


def test_fps_sampling_takes_one_frame_per_tick(tmp_path):
    video = tmp_path / "7.mp4"
    write_test_video(video)  # 1 s at 10 fps
    written = extract_video(video, tmp_path / "images", fps=5)

    folder = tmp_path / "images" / "7"
    assert written == 5
    for k in range(5):  # frames 0, 2, 4, 6, 8
        assert brightness(folder / f"7_{k}.jpg") == pytest.approx(20 + 40 * k, abs=8)


def test_corrupt_video_raises_and_leaves_nothing(tmp_path):
    video = tmp_path / "55.mp4"
    video.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(VideoDecodeError, match="55.mp4"):
        extract_video(video, tmp_path / "images", num_frames=3)
    assert not (tmp_path / "images").exists()


def test_bad_name_and_bad_sampling_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="integer pid"):
        extract_video(tmp_path / "clip_a.mp4", tmp_path / "images", num_frames=3)
    with pytest.raises(ValueError, match="exactly one"):
        extract_video(tmp_path / "3.mp4", tmp_path / "images", num_frames=3, fps=1.0)


def test_cli_skips_and_counts_bad_files(tmp_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    write_test_video(videos / "50003.mp4")
    write_test_video(videos / "100004.mp4", num_frames=6)
    (videos / "77.mp4").write_bytes(b"not a video at all" * 100)
    write_test_video(videos / "promo.mp4")
    out = tmp_path / "images"

    assert main(["--videos", str(videos), "--out", str(out), "--num-frames", "3", "--backend", "av"]) == 0

    printed = capsys.readouterr().out
    assert "77.mp4" in printed and "promo.mp4" in printed
    assert "extracted 6 frames from 2 videos" in printed
    assert "1 undecodable, 1 badly named, 4 files" in printed
    assert frame_files(out / "3", 50003) == ["50003_0.jpg", "50003_1.jpg", "50003_2.jpg"]
    assert frame_files(out / "4", 100004) == ["100004_0.jpg", "100004_1.jpg", "100004_2.jpg"]
    assert (out / "3" / "50003.jpg").exists() and (out / "4" / "100004.jpg").exists()
    assert not list(out.rglob("77*"))


def test_cli_exit_codes(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    out = str(tmp_path / "images")
    assert main(["--videos", str(videos), "--out", out]) == 0  # nothing to do is not an error
    (videos / "9.mp4").write_bytes(b"\x00" * 64)
    assert main(["--videos", str(videos), "--out", out, "--backend", "av"]) == 1


def test_missing_video_folder_is_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["--videos", str(tmp_path / "nope"), "--out", str(tmp_path / "images")])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {tmp_path / 'nope'}: no such file or folder; check the path (DATA_ROOT / --data_root, or the option "
        "or variable that names it)"]
    assert not (tmp_path / "images").exists()
