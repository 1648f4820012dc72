import pytest

from pipeline import fs


@pytest.mark.parametrize("where", ["local", "gcs"])
def test_roundtrip_and_listing(where, tmp_path, request):
    root = str(tmp_path) if where == "local" else request.getfixturevalue("gcs_bucket")
    url = fs.join(root, "a", "b.json")
    fs.write_json(url, {"x": 1})
    assert fs.read_json(url) == {"x": 1}
    assert fs.exists(url)
    fs.write_bytes(fs.join(root, "a", "c.bin"), b"\x00" * 300_000)
    names = [fs.basename(u) for u in fs.listdir(fs.join(root, "a"))]
    assert names == ["b.json", "c.bin"]
    assert len(fs.read_bytes(fs.join(root, "a", "c.bin"))) == 300_000
    fs.remove(fs.join(root, "a"), recursive=True)
    assert not fs.exists(url)


def test_local_write_leaves_no_temp_files(tmp_path):
    fs.write_text(str(tmp_path / "f.txt"), "hello")
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]
