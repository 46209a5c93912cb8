import numpy as np
import pytest

from real20m.datasets import annotations
from real20m.datasets.annotations import (
    AnnotationError, UnsafePathError, annotation_format, load_clusters, load_ground_truth, load_items,
    load_query_groups, parse_doc_id, parse_query_id, safe_join,
)


def write(tmp_path, name, text):
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return str(path)


def groups_as_lists(groups):
    return [(groups.query(i), groups.ids[0][groups.indptr[0][i]:groups.indptr[0][i + 1]].tolist(),
             groups.ids[1][groups.indptr[1][i]:groups.indptr[1][i + 1]].tolist()) for i in range(len(groups))]


def test_query_groups_parse_ids_none_blank_crlf_and_unicode(tmp_path):
    path = write(tmp_path, "train.txt", "red dress\t1,22,333\tNone\n\n连衣裙 夏季\tNone\t1000012\r\nbag\t5\t6,999999999999\n")
    groups = load_query_groups(path)
    assert groups_as_lists(groups) == [
        ("red dress", [1, 22, 333], []), ("连衣裙 夏季", [], [1000012]), ("bag", [5], [6, 999999999999])]
    assert groups.ids[0].dtype == np.int64 and groups.query_bytes.dtype == np.uint8
    assert groups.member_counts(0).tolist() == [3, 0, 1]
    assert groups.member(2, 1, 1) == 999999999999


def test_query_groups_utf8_bom_is_not_part_of_the_first_query(tmp_path):
    path = write(tmp_path, "train.txt", "\ufeff红色\t1\tNone\n".encode("utf-8"))
    assert groups_as_lists(load_query_groups(path)) == [("红色", [1], [])]


def test_query_groups_last_line_without_newline(tmp_path):
    path = write(tmp_path, "train.txt", "a\t1\tNone\nb\tNone\t2")
    assert groups_as_lists(load_query_groups(path)) == [("a", [1], []), ("b", [], [2])]


def test_query_groups_chunk_boundaries_match_reference(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    lines, expected = [], []
    for i in range(500):
        goods = rng.integers(0, 10**12, size=rng.integers(0, 4)).tolist()
        videos = rng.integers(0, 10**6, size=rng.integers(0 if goods else 1, 4)).tolist()
        query = f"query {i} 查询"
        lines.append(f"{query}\t{','.join(map(str, goods)) or 'None'}\t{','.join(map(str, videos)) or 'None'}")
        expected.append((query, goods, videos))
    path = write(tmp_path, "train.txt", "\n".join(lines) + "\n")
    monkeypatch.setattr(annotations, "_CHUNK_BYTES", 37)
    assert groups_as_lists(load_query_groups(path)) == expected


BILINGUAL = "红色连衣裙\t1,2\tNone\tred dress\n\n背包\tNone\t7\tbackpack\r\n"


def test_four_field_train_file_gives_the_query_of_the_language(tmp_path):
    path = write(tmp_path, "train.txt", BILINGUAL)
    assert annotation_format(path).name == "query_groups"
    assert groups_as_lists(load_query_groups(path)) == [("红色连衣裙", [1, 2], []), ("背包", [], [7])]
    assert groups_as_lists(load_query_groups(path, "zh")) == groups_as_lists(load_query_groups(path))
    assert groups_as_lists(load_query_groups(path, "en")) == [("red dress", [1, 2], []), ("backpack", [], [7])]


def test_english_needs_the_fourth_field(tmp_path):
    path = write(tmp_path, "train.txt", "红色\t1\tNone\n")
    with pytest.raises(AnnotationError, match=f"{path}: query language 'en' reads the query from field 4, "
                                              "but the lines have 3 fields"):
        load_query_groups(path, "en")


@pytest.mark.parametrize("line, reason", [
    ("红色\t1\tNone", "expected 4 tab-separated fields, got 3"),
    ("红色\t1\tNone\t", "empty query"),
])
def test_four_field_bad_line_names_file_and_line(tmp_path, line, reason):
    path = write(tmp_path, "train.txt", BILINGUAL + line + "\n")
    with pytest.raises(AnnotationError, match=reason) as error:
        load_query_groups(path, "en")
    assert str(error.value).startswith(f"{path}:4: ")


@pytest.mark.parametrize("line, reason", [
    ("only two\tfields", "expected 3 tab-separated fields, got 2"),
    ("q\t1,x2\tNone", "invalid id list"),
    ("q\t1,,2\tNone", "invalid id list"),
    ("q\t1,\tNone", "invalid id list"),
    ("q\t\t5", "empty id list"),
    ("\t1\t2", "empty query"),
    ("q\tNone\tNone", "both id lists are None"),
])
def test_query_groups_bad_line_names_file_line_and_text(tmp_path, monkeypatch, line, reason):
    monkeypatch.setattr(annotations, "_CHUNK_BYTES", 16)  # the bad line sits in a later chunk
    path = write(tmp_path, "train.txt", f"good one\t1\t2\n\nsecond\tNone\t3\n{line}\nafter\t1\t1\n")
    with pytest.raises(AnnotationError) as error:
        load_query_groups(path)
    assert str(error.value).startswith(f"{path}:4: ")
    assert reason in str(error.value)
    assert line in str(error.value)


ITEMS = ("5\tgoods\tred dress\t5/5.jpg\t5/5.txt\n"
         "1000012\tphoto\tq 2\t12/1000012_0.jpg,12/1000012_1.jpg\tNone\n"
         "7\tgoods\tq3\tNone\t\n")


def test_items_parse(tmp_path):
    table = load_items(write(tmp_path, "items.txt", ITEMS))
    assert table.pids.tolist() == [5, 1000012, 7]
    assert table.sources.tolist() == [0, 1, 0]
    assert table.fields(0) == ("red dress", ["5/5.jpg"], "5/5.txt")
    assert table.fields(1) == ("q 2", ["12/1000012_0.jpg", "12/1000012_1.jpg"], None)
    assert table.fields(2) == ("q3", None, None)


@pytest.mark.parametrize("line, reason", [
    ("8\tvideo\tq\tNone\tNone", "unknown source 'video'"),
    ("8x\tgoods\tq\tNone\tNone", "invalid id list"),
    ("8,9\tgoods\tq\tNone\tNone", "pid must be one integer"),
    ("8\tgoods\tq\tNone", "expected 5 tab-separated fields, got 4"),
])
def test_items_bad_line(tmp_path, line, reason):
    path = write(tmp_path, "items.txt", ITEMS + line + "\n")
    with pytest.raises(AnnotationError, match=reason) as error:
        load_items(path)
    assert str(error.value).startswith(f"{path}:4: ") and line in str(error.value)


@pytest.mark.parametrize("paths", ["/etc/passwd\tNone", "a.jpg,../../secret.jpg\tNone", "a.jpg\t../x.txt"])
def test_items_unsafe_paths_rejected_at_load(tmp_path, paths):
    path = write(tmp_path, "items.txt", ITEMS + f"9\tphoto\tq..q\t{paths}\n")
    with pytest.raises(UnsafePathError, match=f"{path}:4: "):
        load_items(path)


def test_items_dots_inside_names_are_safe(tmp_path):
    table = load_items(write(tmp_path, "items.txt", "9\tphoto\tq..q\ta..b/c.jpg\tt..x.txt\n"))
    assert table.fields(0) == ("q..q", ["a..b/c.jpg"], "t..x.txt")


def test_safe_join(tmp_path):
    assert safe_join("/data/root", "12/a.jpg") == "/data/root/12/a.jpg"
    assert safe_join("/data/root", "12/../13/a.jpg") == "/data/root/13/a.jpg"
    with pytest.raises(UnsafePathError, match="absolute"):
        safe_join("/data/root", "/etc/passwd")
    with pytest.raises(UnsafePathError, match="escapes"):
        safe_join("/data/root", "12/../../a.jpg")


def test_ground_truth_ids():
    assert parse_doc_id("video/images/12/1000012_3.jpg") == 1000012
    assert parse_query_id("video/images/12/1000012_3.jpg") == 1000012
    assert parse_query_id("goods/images/7/50007.jpg") == 50007
    assert parse_doc_id("goods/images/7/50007.jpg") == 50007
    assert parse_doc_id("1000012.jpg") == 1000012
    with pytest.raises(ValueError, match="no numeric id"):
        parse_doc_id("video/images/12/abc.jpg")


def test_load_ground_truth(tmp_path):
    path = write(tmp_path, "gt.txt", "video/images/12/1000012_3.jpg\tgoods/images/7/50007.jpg,goods/images/8/50008.jpg,"
                                     "goods/images/7/50007.jpg\n\ngoods/images/7/50007.jpg\tvideo/images/12/1000012.jpg\n")
    assert load_ground_truth(path) == {1000012: [50007, 50008], 50007: [1000012]}
    bad = write(tmp_path, "bad.txt", "1000012.jpg\t50007.jpg\nno tab here\n")
    with pytest.raises(AnnotationError, match=f"{bad}:2: .*no tab here"):
        load_ground_truth(bad)
    bad_id = write(tmp_path, "bad_id.txt", "abc.jpg\t50007.jpg\n")
    with pytest.raises(AnnotationError, match=f"{bad_id}:1: "):
        load_ground_truth(bad_id)


def test_clusters(tmp_path):
    path = write(tmp_path, "cluster.txt", "red dress\tclothes\tdress\tred\nblue dress\tclothes\tdress\tblue\n"
                                          "phone case\tdigital\tcase\tphone\n")
    clusters = load_clusters(path)
    assert clusters.labels.tolist() == [[0, 0, 0], [0, 0, 1], [1, 1, 2]]
    assert clusters.labels_for(["phone case", "unknown", "blue dress"], level=0).tolist() == [1, -1, 0]
    assert clusters.labels_for(["red dress", "blue dress"], level=2).tolist() == [0, 1]
    bad = write(tmp_path, "bad.txt", "q\tonly\ttwo\n")
    with pytest.raises(AnnotationError, match=f"{bad}:1: "):
        load_clusters(bad)


def test_the_format_of_a_file_is_found_by_its_fields(tmp_path):
    assert annotation_format(write(tmp_path, "a.txt", "\nq\t1\tNone\n")).name == "query_groups"
    assert annotation_format(write(tmp_path, "b.txt", ITEMS)).name == "items"
    with pytest.raises(AnnotationError, match="got 2"):
        annotation_format(write(tmp_path, "c.txt", "a\tb\n"))
