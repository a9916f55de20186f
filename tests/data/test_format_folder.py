"""Folder layouts: SSFER's ImageFolder (canonical or torchvision class order), unlabeled face folders, file lists."""

import numpy as np
import pytest

from ferfast.data import split_labeled
from ferfast.data.base import BOX_SIDECAR, FER7_CLASSES, FER8_CLASSES, UNREADABLE_FILE, save_box_sidecar
from ferfast.data.formats import FaceFolder, FERImageFolder, FileList, folder_classes
from tests.data.test_format_rafdb import colour_of, decoded_colour, write_image

# class folder -> image names (mixed-case extensions, one nested folder, one non-image file)
EXPRESSION_TRAIN = {
    "Angry": ["a1.jpg", "a2.JPG"],
    "disgust": ["d1.png"],
    "fear": ["f1.jpeg"],
    "happy": ["h1.jpg", "h2.jpg", "sub/h3.png"],
    "neutral": ["n1.jpg", "notes.txt"],
    "sad": ["s1.bmp"],
    "surprise": ["u1.webp"],
}


def write_tree(folder, tree):
    """Real images (solid colours in creation order) and non-image files under folder/<class>/...; returns
    {relative path: colour} for the images."""
    colours = {}
    for cls, names in tree.items():
        for name in names:
            path = folder / cls / name
            if name.endswith(".txt"):
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("not an image")
                continue
            colour = colour_of(len(colours))
            write_image(path, colour, size=(64, 64), fmt="WEBP" if name.endswith(".webp") else None)
            colours[f"{cls}/{name}"] = colour
    return colours


def test_expression_folders_map_to_canonical_order(tmp_path):
    colours = write_tree(tmp_path / "train", EXPRESSION_TRAIN)
    ds = FERImageFolder(tmp_path, "train")
    assert isinstance(ds, FERImageFolder) and ds.class_names == FER7_CLASSES
    # folders sorted as torchvision does (case-sensitive: "Angry" first), images sorted inside each
    assert ds.files == [f"train/{k}" for k in colours]
    names = [ds.class_names[k] for k in ds.labels]
    assert names == [
        "anger",
        "anger",
        "disgust",
        "fear",
        "happiness",
        "happiness",
        "happiness",
        "neutral",
        "sadness",
        "surprise",
    ]
    assert ds.class_counts().tolist() == [1, 3, 1, 1, 1, 1, 2]
    assert ds.class_to_idx["happy"] == 1 and ds.class_to_idx["Angry"] == 6
    for i, f in enumerate(ds.files):
        tol = 3 if f.endswith((".png", ".bmp")) else 8
        np.testing.assert_allclose(decoded_colour(ds.read_bytes(i)), colours[f.removeprefix("train/")], atol=tol)


def test_contempt_folder_gives_eight_classes_and_test_shares_train_classes(tmp_path):
    write_tree(tmp_path / "train", {"contempt": ["c.jpg"], "happy": ["h.jpg"]})
    write_tree(tmp_path / "test", {"happy": ["h.jpg"], "Contempt": ["c.png"]})
    train, test = FERImageFolder(tmp_path, "train"), FERImageFolder(tmp_path, "test")
    assert train.class_names == test.class_names == FER8_CLASSES
    assert train.labels.tolist() == [7, 1] and test.labels.tolist() == [7, 1]
    assert test.files == ["test/Contempt/c.png", "test/happy/h.jpg"]
    assert test.class_to_idx == {"Contempt": 7, "happy": 1}


def test_other_folder_names_keep_torchvision_semantics(tmp_path):
    write_tree(tmp_path / "train", {"b_class": ["1.jpg"], "a_class": ["1.jpg", "2.jpg"], "c_class": ["1.jpg"]})
    write_tree(tmp_path / "test", {"c_class": ["9.jpg"]})
    train, test = FERImageFolder(tmp_path, "train"), FERImageFolder(tmp_path, "test")
    assert train.class_names == test.class_names == ("a_class", "b_class", "c_class")
    assert train.labels.tolist() == [0, 0, 1, 2]
    assert test.labels.tolist() == [2]  # c_class's index in train, not 0
    assert folder_classes(["happy", "dog"]) == (("dog", "happy"), {"dog": 0, "happy": 1})


def test_test_split_without_train_uses_its_own_classes(tmp_path):
    write_tree(tmp_path / "test", {"sad": ["1.jpg"], "happy": ["1.jpg"]})
    ds = FERImageFolder(tmp_path, "test")
    assert ds.class_names == FER7_CLASSES and ds.labels.tolist() == [1, 2]


def test_imagefolder_sidecar_unreadable_and_split_labeled(tmp_path):
    write_tree(tmp_path / "train", EXPRESSION_TRAIN)
    save_box_sidecar(tmp_path / BOX_SIDECAR, ["train/happy/h2.jpg"], np.array([[0.2, 0.1, 0.8, 0.9]]))
    (tmp_path / UNREADABLE_FILE).write_text("train/Angry/a2.JPG\n")
    with pytest.warns(UserWarning, match="1 unreadable"):
        ds = FERImageFolder(tmp_path, "train")
    assert type(ds) is FERImageFolder and "train/Angry/a2.JPG" not in ds.files and len(ds) == 9
    i = ds.files.index("train/happy/h2.jpg")
    np.testing.assert_allclose(ds.boxes[i], [0.2, 0.1, 0.8, 0.9], atol=1e-6)
    assert np.isnan(np.delete(ds.boxes, i, axis=0)).all()
    split = split_labeled(ds, 0.4, seed=0)
    assert split.class_counts == (1, 3, 1, 1, 1, 1, 1)
    assert len(split.labeled) == 7  # max(1, round(0.4 * n)) per class: one each


def test_imagefolder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"ImageFolder train split not found: .*train"):
        FERImageFolder(tmp_path, "train")
    with pytest.raises(ValueError, match="split must be one of"):
        FERImageFolder(tmp_path, "val")
    (tmp_path / "train" / "happy").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no images in"):
        FERImageFolder(tmp_path, "train")
    write_tree(tmp_path / "train", {"happy": ["1.jpg"], "Happiness": ["2.jpg"]})
    with pytest.raises(ValueError, match="both name the class 'happiness'"):
        FERImageFolder(tmp_path, "train")


def test_test_class_not_in_train_raises(tmp_path):
    write_tree(tmp_path / "train", {"happy": ["1.jpg"]})
    write_tree(tmp_path / "test", {"happy": ["1.jpg"], "dog": ["1.jpg"]})
    with pytest.raises(ValueError, match=r"\['dog'\].*not classes of"):
        FERImageFolder(tmp_path, "test")


FACES = {"id_b": ["x.jpg"], "id_a": ["1.png", "2.jpg", "sub/3.jpg"], ".": ["loose.jpg", "readme.txt"]}


def test_face_folder_identities_and_order(tmp_path):
    colours = write_tree(tmp_path, FACES)
    (tmp_path / "id_c").mkdir()  # no images: no identity
    ds = FaceFolder(tmp_path)
    assert ds.files == ["id_a/1.png", "id_a/2.jpg", "id_a/sub/3.jpg", "id_b/x.jpg", "loose.jpg"]
    assert ds.identities.tolist() == [0, 0, 0, 1, -1] and ds.num_identities == 2
    assert (ds.labels == -1).all() and ds.split == "unlabeled" and ds.class_counts().sum() == 0
    np.testing.assert_allclose(decoded_colour(ds.read_bytes(3)), colours["id_b/x.jpg"], atol=3)
    assert FaceFolder(tmp_path).files == ds.files
    sub = ds.subset([3, 0])
    assert sub.files == ["id_b/x.jpg", "id_a/1.png"] and sub.identities.tolist() == [1, 0]


def test_face_folder_unreadable_and_sidecar(tmp_path):
    write_tree(tmp_path, FACES)
    (tmp_path / UNREADABLE_FILE).write_text("id_a/2.jpg\n")
    save_box_sidecar(tmp_path / BOX_SIDECAR, ["id_b/x.jpg"], np.array([[0.3, 0.3, 0.7, 0.7]]))
    with pytest.warns(UserWarning, match="unreadable"):
        ds = FaceFolder(tmp_path)
    assert type(ds) is FaceFolder
    assert ds.files == ["id_a/1.png", "id_a/sub/3.jpg", "id_b/x.jpg", "loose.jpg"]
    assert ds.identities.tolist() == [0, 0, 1, -1]
    np.testing.assert_allclose(ds.boxes[2], [0.3, 0.3, 0.7, 0.7], atol=1e-6)


def test_face_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="face folder not found"):
        FaceFolder(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="no images under"):
        FaceFolder(tmp_path)


def test_file_list_columns_comments_and_roots(tmp_path):
    colours = write_tree(tmp_path / "imgs", {"p1": ["a.jpg", "b.png"], "p2": ["c.jpg"]})
    listing = "# path label\n\nimgs/p2/c.jpg 3\n  imgs/p1/a.jpg\t5 extra\nimgs/p1/b.png\n"
    (tmp_path / "train.txt").write_text(listing)
    ds = FileList(tmp_path / "train.txt")
    assert ds.files == ["imgs/p2/c.jpg", "imgs/p1/a.jpg", "imgs/p1/b.png"]  # the list's order
    assert ds.root == tmp_path and (ds.labels == -1).all() and (ds.identities == -1).all()
    np.testing.assert_allclose(decoded_colour(ds.read_bytes(0)), colours["p2/c.jpg"], atol=3)
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "l.txt").write_text(f"p1/a.jpg\n{tmp_path / 'imgs' / 'p2' / 'c.jpg'}\n")
    other = FileList(tmp_path / "lists" / "l.txt", root=tmp_path / "imgs")
    assert other.files == ["p1/a.jpg", "p2/c.jpg"] and other.root == tmp_path / "imgs"
    np.testing.assert_allclose(decoded_colour(other.read_bytes(1)), colours["p2/c.jpg"], atol=3)


def test_file_list_missing_files(tmp_path):
    write_tree(tmp_path, {"p": ["a.jpg"]})
    names = [f"p/gone{i}.jpg" for i in range(7)]
    (tmp_path / "list.txt").write_text("\n".join(["p/a.jpg", *names]) + "\n")
    with pytest.raises(FileNotFoundError, match=r"list.txt: 7 file\(s\): p/gone0.jpg, .*p/gone4.jpg \(and 2 more\)"):
        FileList(tmp_path / "list.txt")
    with pytest.warns(UserWarning, match=r"skipping 7 file\(s\)"):
        ds = FileList(tmp_path / "list.txt", missing="skip")
    assert ds.files == ["p/a.jpg"] and type(ds) is FileList and ds.identities.tolist() == [-1]
    (tmp_path / UNREADABLE_FILE).write_text("\n".join(names) + "\n")  # listed as unreadable: dropped, not missing
    with pytest.warns(UserWarning, match="7 unreadable"):
        assert FileList(tmp_path / "list.txt").files == ["p/a.jpg"]


def test_file_list_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"image list file not found: .*none.txt"):
        FileList(tmp_path / "none.txt")
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(ValueError, match=r"empty.txt: lists no images"):
        FileList(tmp_path / "empty.txt")
    (tmp_path / "l.txt").write_text("a.jpg\n")
    with pytest.raises(ValueError, match="missing must be one of"):
        FileList(tmp_path / "l.txt", missing="ignore")
    (tmp_path / "abs.txt").write_text("/elsewhere/a.jpg\n")
    with pytest.raises(ValueError, match=r"abs.txt: line 1: /elsewhere/a.jpg is not under the image root"):
        FileList(tmp_path / "abs.txt")
