"""grain pipelines: determinism, process shards, resumable iterators, eval padding, globals."""

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import NamedSharding, PartitionSpec
from test_data_fixtures import write_cityscapes, write_gta5

from lcmsm_jax.data import pipeline, sources
from lcmsm_jax.data import transforms as T

KW = dict(scale=(48, 32), crop_size=(16, 16), num_threads=2)


@pytest.fixture(scope="module")
def gta(tmp_path_factory):
    root = tmp_path_factory.mktemp("gta")
    write_gta5(str(root), n=8, size=(40, 60))  # resized to 32x48, cropped to 16x16
    return sources.open_source("gta5", str(root))


def _take(ds, n):
    it = iter(ds)
    return [next(it) for _ in range(n)]


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_batches_shapes_and_determinism(gta):
    make = lambda seed, stream="source": pipeline.train_dataset(
        gta, batch_size=2, seed=seed, stream=stream, **KW
    )
    first = _take(make(0), 3)
    assert first[0]["image"].shape == (2, 16, 16, 3) and first[0]["image"].dtype == np.float32
    assert first[0]["label"].shape == (2, 16, 16) and first[0]["label"].dtype == np.int32
    assert set(np.unique(first[0]["label"])) <= set(range(19)) | {255}
    for a, b in zip(first, _take(make(0), 3), strict=True):
        _same(a, b)
    other_seed = _take(make(1), 3)
    other_stream = _take(make(0, "target"), 3)
    assert not all(
        np.array_equal(a["image"], b["image"]) for a, b in zip(first, other_seed, strict=True)
    )
    assert not all(
        np.array_equal(a["image"], b["image"]) for a, b in zip(first, other_stream, strict=True)
    )


def test_two_processes_read_disjoint_shards_that_cover_the_data(gta):
    # Target-style stream: a fresh permutation per epoch, 8 images, global batch 4.
    procs = [
        _take(pipeline.train_dataset(gta, batch_size=2, seed=3, stream="target",
                                     process_index=p, process_count=2, cat_max_ratio=1.0,
                                     **KW), 4)
        for p in range(2)
    ]  # fmt: skip
    single = _take(pipeline.train_dataset(gta, batch_size=4, seed=3, stream="target",
                                          cat_max_ratio=1.0, **KW), 4)  # fmt: skip
    for epoch in range(2):
        seen = [np.concatenate([b["index"] for b in procs[p][2 * epoch : 2 * epoch + 2]])
                for p in range(2)]  # fmt: skip
        assert not set(seen[0]) & set(seen[1])
        assert sorted(np.concatenate(seen)) == list(range(8))
    # A global batch does not depend on the number of processes: the shares, joined in
    # process order, are the single-process batch row for row (crops and flips included).
    for step in range(4):
        for key in ("index", "image", "label"):
            joined = np.concatenate([procs[p][step][key] for p in range(2)])
            np.testing.assert_array_equal(joined, single[step][key], err_msg=key)


def test_restored_iterator_continues_with_the_next_batch(gta):
    make = lambda: pipeline.train_dataset(gta, batch_size=2, seed=0, stream="source", **KW)
    it = iter(make())
    for _ in range(3):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(2)]
    restored = iter(make())
    restored.set_state(state)
    for want in expected:
        _same(next(restored), want)


def test_orbax_checkpoint_of_source_and_target_iterators(gta, tmp_path):
    make = lambda stream: iter(
        pipeline.train_dataset(gta, batch_size=2, seed=0, stream=stream, **KW)
    )
    src, tgt = make("source"), make("target")
    for _ in range(2):
        next(src)
    next(tgt)
    manager = ocp.CheckpointManager(tmp_path / "ckpt")
    manager.save(
        7,
        args=ocp.args.Composite(
            source_data=grain.checkpoint.CheckpointSave(src),
            target_data=grain.checkpoint.CheckpointSave(tgt),
        ),
    )
    manager.wait_until_finished()
    want_src, want_tgt = next(src), next(tgt)
    new_src, new_tgt = make("source"), make("target")
    manager.restore(
        7,
        args=ocp.args.Composite(
            source_data=grain.checkpoint.CheckpointRestore(new_src),
            target_data=grain.checkpoint.CheckpointRestore(new_tgt),
        ),
    )
    _same(next(new_src), want_src)
    _same(next(new_tgt), want_tgt)
    manager.close()


def test_worker_processes_give_the_same_stream(gta):
    make = lambda workers: pipeline.train_dataset(
        gta, batch_size=2, seed=0, stream="source", worker_count=workers, **KW
    )
    it = iter(make(2))
    try:
        with_workers = [next(it) for _ in range(4)]
        state = it.get_state()
        after = next(it)
    finally:
        it.close()
    for a, b in zip(with_workers, _take(make(0), 4), strict=True):
        _same(a, b)
    resumed = iter(make(2))
    try:
        resumed.set_state(state)
        _same(next(resumed), after)
    finally:
        resumed.close()


def test_unlabelled_target_has_no_label(tmp_path):
    write_cityscapes(str(tmp_path), size=(32, 64))
    source = sources.open_source("cityscapes", str(tmp_path), "train", labels=False)
    batch = next(iter(pipeline.train_dataset(
        source, batch_size=2, seed=0, stream="target", scale=(32, 16), crop_size=(16, 16),
        cat_max_ratio=1.0, sampling="uniform", num_threads=0,
    )))  # fmt: skip
    assert set(batch) == {"image", "index"} and batch["image"].shape == (2, 16, 16, 3)


def test_eval_shards_are_padded_with_a_validity_mask(tmp_path):
    write_cityscapes(str(tmp_path), split="val", cities=("a", "b", "c"), per_city=2,
                     size=(32, 64))  # fmt: skip
    source = sources.open_source("cityscapes", str(tmp_path), "val")
    source.images, source.labels = source.images[:5], source.labels[:5]  # N = 5
    batches = [
        list(pipeline.eval_dataset(source, batch_size=2, process_index=p, process_count=2,
                                   scale=(32, 16), num_threads=0))
        for p in range(2)
    ]  # fmt: skip
    assert [len(b) for b in batches] == [2, 2]  # ceil(ceil(5 / 2) / 2) batches each
    seen = []
    for p, proc in enumerate(batches):
        for batch in proc:
            assert batch["image"].shape == (2, 16, 32, 3) and batch["label"].shape == (2, 32, 64)
            for j in range(2):
                if batch["valid"][j]:
                    i = int(batch["index"][j])
                    seen.append((p, i))
                    np.testing.assert_array_equal(batch["label"][j], source[i]["label"])
                else:
                    assert batch["index"][j] == -1 and (batch["label"][j] == 255).all()
                    assert (batch["image"][j] == 0).all()
    assert sorted(i for _, i in seen) == list(range(5))
    assert {i for p, i in seen if p == 0}.isdisjoint({i for p, i in seen if p == 1})
    assert sum(b["valid"].sum() for proc in batches for b in proc) == 5


def test_to_global_builds_sharded_arrays():
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    batch = {"image": np.ones((8, 4, 4, 3), np.float32), "label": np.zeros((8, 4, 4), np.int32),
             "valid": np.ones((8,), bool)}  # fmt: skip
    out = pipeline.to_global(batch, sharding)
    assert out["image"].shape == (8, 4, 4, 3) and out["image"].sharding == sharding
    assert len(out["label"].addressable_shards) == 8 and bool(out["valid"].all())


def test_rejects_bad_arguments(gta):
    with pytest.raises(ValueError, match="process_index 2"):
        pipeline.train_dataset(gta, batch_size=1, seed=0, stream="s", process_index=2,
                               process_count=2)  # fmt: skip
    with pytest.raises(ValueError, match="3 rows for 8 images"):
        pipeline.train_dataset(gta, batch_size=1, seed=0, stream="s",
                               class_counts=np.zeros((3, 19)))  # fmt: skip


def test_flip_is_fair_and_keeps_image_and_label_aligned():
    label = np.tile(np.arange(12, dtype=np.uint8), (6, 1))  # column index as class
    image = np.repeat((label * 20)[..., None], 3, axis=-1)
    flips = 0
    for seed in range(400):
        view = pipeline.train_view(
            image, label, np.random.default_rng(seed), scale=(12, 6), crop_size=(6, 12),
            cat_max_ratio=1.0, flip_prob=0.5,
        )  # fmt: skip
        red = view["image"][..., 0] * T.STD_RGB[0] + T.MEAN_RGB[0]
        np.testing.assert_allclose(red, view["label"] * 20, atol=1e-3)
        flips += view["label"][0, 0] == 11
    assert 160 < flips < 240  # p = 0.5, 400 draws: within 4 sigma


def test_automatic_worker_count_leaves_cores_for_the_training_process(monkeypatch):
    assert pipeline.worker_count(3, iterators=2) == 3  # an explicit count is kept
    assert pipeline.worker_count(0, iterators=2) == 0
    # -1: (cores - RESERVED_CORES) shared by the iterators, capped.
    assert pipeline.worker_count(-1, iterators=2, cores=2) == 0  # this machine: in-process
    assert pipeline.worker_count(-1, iterators=2, cores=16) == 7  # a GPU host, per domain
    assert pipeline.worker_count(-1, iterators=1, cores=16) == 8  # evaluation, capped
    assert pipeline.worker_count(-1, iterators=2, cores=1) == 0
    # Without `cores`: the CPUs this process may run on (its affinity), not the machine's.
    monkeypatch.setattr(pipeline.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5})
    assert pipeline.worker_count(-1, iterators=2) == 2
