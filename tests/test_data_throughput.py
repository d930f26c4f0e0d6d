"""The throughput benchmark runs end to end on true-size synthetic images."""

from test_data_fixtures import write_gta5

from lcmsm_jax.data import pipeline, sources, throughput


def test_benchmark_reports_images_per_second():
    result = throughput.benchmark(num_images=1, num_samples=2)
    assert set(result) == {"source_images_per_s", "target_images_per_s", "pair_images_per_s"}
    assert all(v > 0 for v in result.values())


def test_time_batches_counts_images(tmp_path):
    write_gta5(str(tmp_path), n=4, size=(32, 48))
    source = sources.open_source("gta5", str(tmp_path))
    ds = pipeline.train_dataset(source, batch_size=2, seed=0, stream="source", scale=(48, 32),
                                crop_size=(16, 16))  # fmt: skip
    assert throughput.time_batches(ds, num_batches=3) > 0
