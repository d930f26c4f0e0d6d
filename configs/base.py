"""Defaults shared by every experiment: LC-MSM on GTA5 -> Cityscapes (docs/method.md §4).

Experiment files import `get_config()` from here and change only what differs.
Any field can be overridden on the command line: `--config.model.backbone=mit_b0`.
"""

import ml_collections


def model_config() -> ml_collections.ConfigDict:
    """MiT-B5 + DAFormer head + LC-MSM head, both heads 512 wide with separable ASPP."""
    model = ml_collections.ConfigDict()
    model.backbone = "mit_b5"  # mit_b0 .. mit_b5
    model.drop_path_rate = 0.1  # stochastic depth, linear over all blocks
    model.num_classes = 19
    model.text_dim = 1024  # OpenCLIP ViT-H-14 text width
    model.dtype = "float32"  # compute dtype; parameters stay float32
    model.depthwise_impl = "auto"  # auto | conv | shifted_sum (auto: shifted_sum on CPU)
    # none | block | stage: recompute MiT blocks (stages) in backward. "block" (with
    # train.backward = "per_pass") is what lets the paper's step fit in 20 GB (docs/performance.md).
    model.remat = "block"
    model.scan_blocks = True  # each MiT stage's blocks as one scanned layer (False: unrolled)
    model.head_remat = False  # recompute both heads' trunks (embeddings + ASPP) in backward

    model.decode_head = ml_collections.ConfigDict()
    model.decode_head.embed_dim = 512  # DAFormer itself uses 256
    model.decode_head.channels = 512
    model.decode_head.fusion = "sep_aspp"  # sep_aspp | aspp | conv (1x1, SegFormer head)
    model.decode_head.dilations = (1, 6, 12, 18)
    model.decode_head.dropout = 0.1  # Dropout2d before the classifier

    model.lcmsm_head = ml_collections.ConfigDict()
    model.lcmsm_head.embed_dim = 512
    model.lcmsm_head.channels = 512  # also the text projection's output width
    model.lcmsm_head.fusion = "sep_aspp"
    model.lcmsm_head.dilations = (1, 6, 12, 18)
    model.lcmsm_head.dropout = 0.1
    model.lcmsm_head.tau = 0.07  # correlation scale 1/tau, a constant
    model.lcmsm_head.spatial_block = "bottleneck"  # bottleneck (arch 1) | depthwise (arch 2) | none
    model.lcmsm_head.block_depth = 2  # shared block applied this many times, last without act
    model.lcmsm_head.activation = "relu"  # relu | lrelu | tanh

    # Multi-resolution training (HRDA, docs/method.md §8): a context crop seen at 0.5 plus a
    # full-resolution detail crop, fused by learned class-wise scale attention.
    model.hrda = ml_collections.ConfigDict()
    model.hrda.enabled = False
    model.hrda.detail_size = (512, 512)  # detail crop (and inference window), multiples of 8
    model.hrda.detail_loss_weight = 0.1  # loss = (1 - w) * fused CE + w * detail CE
    model.hrda.attention_embed_dim = 256
    return model


def data_config() -> ml_collections.ConfigDict:
    """GTA5 (RCS) -> Cityscapes train, evaluated on Cityscapes val (docs/method.md §5)."""
    data = ml_collections.ConfigDict()
    data.batch_size = 2  # global images per domain per step
    data.crop_size = (512, 512)
    data.num_threads = 2  # reader threads per process
    # Grain worker processes per iterator (0 = in-process); -1: from the cores this process
    # may use (lcmsm_jax/data/pipeline.py:worker_count; 0 on a 2-core machine).
    data.worker_count = -1
    data.eval_classes = "cityscapes19"  # cityscapes19 | synthia16 (adds mIoU16 and mIoU13)

    data.source = ml_collections.ConfigDict()
    data.source.dataset = "gta5"  # gta5 | synthia | synthetic
    data.source.root = ""
    data.source.split = "all"
    # files: the unpacked dataset under root | tfds: its ArrayRecord build (tools/prepare_tfds.py)
    data.source.format = "files"
    data.source.tfds_name = ""  # "" = the dataset's build (lcmsm_gta5, lcmsm_synthia, ...)
    data.source.tfds_data_dir = ""  # "" = TFDS' default ($TFDS_DATA_DIR, ~/tensorflow_datasets)
    data.source.scale = (1280, 720)  # keep-ratio fit: GTA5 1914x1052 -> 1280x704
    data.source.cat_max_ratio = 0.75
    data.source.rcs = True
    data.source.rcs_temperature = 0.01
    data.source.rcs_min_pixels = 3000
    data.source.rcs_min_crop_ratio = 0.5

    data.target = ml_collections.ConfigDict()
    data.target.dataset = "cityscapes"  # cityscapes | acdc | darkzurich | synthetic
    data.target.root = ""
    data.target.split = "train"
    data.target.format = "files"  # files | tfds (cityscapes/semantic_segmentation)
    data.target.tfds_name = ""
    data.target.tfds_data_dir = ""
    data.target.scale = (1024, 512)
    data.target.sampling = "uniform"  # the reference draws target images with replacement
    # Pseudo-label margins (top, bottom, left, right) in pixels of the loaded target image:
    # non-zero adds the batch key "target_valid" (docs/method.md §5.7; HRDA: (30, 240, 30, 30)).
    data.target.pseudo_margins = (0, 0, 0, 0)

    data.eval = ml_collections.ConfigDict()
    data.eval.dataset = "cityscapes"
    data.eval.root = ""
    data.eval.split = "val"
    data.eval.scale = (1024, 512)  # network input; labels stay at full resolution
    data.eval.batch_size = 1  # global images per evaluation batch
    data.eval.max_images = 0  # 0 = the whole split

    data.synthetic = ml_collections.ConfigDict()  # used when a dataset is "synthetic"
    data.synthetic.size = (256, 512)  # (height, width) of rendered scenes
    data.synthetic.num_images = 2000  # images per domain and split
    # default | far_objects: adds small people, riders, bikes, poles, signs and lights far
    # down the street (lcmsm_jax/data/synthetic/build.py), for multi-resolution training.
    data.synthetic.variant = "default"
    return data


# HRDA's source resize per source dataset (keep-ratio fit, docs/method.md §5.7).
HR_SOURCE_SCALES = {"gta5": (2560, 1440), "synthia": (2560, 1520)}


def hr_data_config(source: str = "gta5") -> ml_collections.ConfigDict:
    """HRDA's multi-resolution data settings (docs/method.md §5.7), GTA5 or SYNTHIA ->
    Cityscapes: sources at twice DAFormer's scale, Cityscapes at its native 2048 x 1024,
    1024 x 1024 crops, RCS crop ratio 2.0 (a crop needs over 3000 * 2 = 6000 pixels of the
    sampled class), pseudo-label margins (30, 240, 30, 30), evaluation at 2048 x 1024."""
    if source not in HR_SOURCE_SCALES:
        raise ValueError(
            f"hr_data_config: source {source!r}, expected one of {tuple(HR_SOURCE_SCALES)}"
        )
    data = data_config()
    data.crop_size = (1024, 1024)
    data.source.dataset = source
    data.source.scale = HR_SOURCE_SCALES[source]  # GTA5 1914 x 1052 -> 2560 x 1407
    data.source.rcs_min_crop_ratio = 2.0  # DAFormer's 0.5 times 2**2: four times the pixels
    data.target.scale = (2048, 1024)
    data.target.pseudo_margins = (30, 240, 30, 30)
    data.eval.scale = (2048, 1024)
    if source == "synthia":
        data.eval_classes = "synthia16"
    return data


def uda_config() -> ml_collections.ConfigDict:
    """The LC-MSM step (docs/method.md §3); the ablation ladder switches terms off."""
    uda = ml_collections.ConfigDict()
    uda.enabled = True  # False: source-only training (CE on source crops only)
    uda.alpha = 0.999  # EMA teacher: alpha_t = min(1 - 1/(t+1), alpha)
    uda.pseudo_threshold = 0.968
    uda.pseudo_label_head = "lcmsm"  # lcmsm (LC-MSM) | decode (DACS, DAFormer, MIC)
    uda.ignore_top = 0  # pseudo-label crop rows (15 / 120 for DAFormer and MIC)
    uda.ignore_bottom = 0
    uda.color_jitter_apply_probability = 0.8  # on when u > 1 - 0.8, the reference's u > 0.2
    uda.color_jitter_strength = 0.2
    uda.blur = True
    uda.feature_distance_weight = 0.005  # 0 disables the ImageNet feature distance
    uda.feature_distance_classes = (6, 7, 11, 12, 13, 14, 15, 16, 17, 18)  # things
    uda.feature_distance_min_ratio = 0.75
    uda.masked_source = True  # LC-MSM: masked, augmented source -> LC-MSM head
    uda.masked_mix = True  # LC-MSM: masked, re-augmented mixed image -> LC-MSM head
    uda.masked_target = False  # MIC: masked, augmented target -> DAFormer head
    uda.mask_block_size = 32
    uda.mask_ratio = 0.5
    uda.mask_weight = 1.0  # weight of every masked loss term
    uda.target_supervised = False  # oracle: the target's own labels replace pseudo-labels
    return uda


def optim_config() -> ml_collections.ConfigDict:
    """AdamW 6e-5, heads x10, no decay on norms, warmup 1500 then poly (docs/method.md §6.1-6.2)."""
    optim = ml_collections.ConfigDict()
    optim.lr = 6e-5
    optim.betas = (0.9, 0.999)
    optim.eps = 1e-8
    optim.weight_decay = 0.01
    optim.warmup_steps = 1500
    optim.warmup_ratio = 1e-6
    optim.power = 1.0
    optim.min_lr = 0.0
    optim.grad_clip_norm = 0.0  # 0 = none, as the reference
    # Substring rules on parameter names (longest match wins), as mmcv's paramwise_cfg.
    optim.param_groups = ml_collections.ConfigDict(
        {
            "pos_block": {"lr_mult": 1.0, "decay_mult": 0.0},
            "head": {"lr_mult": 10.0, "decay_mult": 1.0},
            "norm": {"lr_mult": 1.0, "decay_mult": 0.0},
        }
    )
    return optim


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    # Compiled programs kept on disk between runs (lcmsm_jax/compile_cache.py); "" = none.
    config.compile_cache_dir = "~/.cache/lcmsm-jax/xla"
    config.model = model_config()
    config.data = data_config()
    config.uda = uda_config()
    config.optim = optim_config()

    config.text = ml_collections.ConfigDict()
    # A file from `lcmsm-embed-text`, or "random:<seed>" for runs without a language prior.
    config.text.embeddings = "text/cityscapes_vith14.npz"

    config.train = ml_collections.ConfigDict()
    config.train.steps = 60_000
    # How the step's gradient is taken (lcmsm_jax/uda/step.py, docs/method.md §3.11): "joint"
    # differentiates the total once; "per_pass" differentiates each student pass right
    # after it runs (the reference's one backward() per loss term), so only one pass's
    # activations are alive at a time. Same gradient, to float rounding.
    config.train.backward = "per_pass"
    config.train.log_every = 50
    config.train.eval_every = 2_000  # 0 = only at the end, -1 = never (each is checkpointed)
    config.train.on_eval_error = "stop"  # stop | continue: after a failed evaluation
    # Also checkpointed: the last step, and the current one on SIGTERM/SIGINT (preemption).
    config.train.checkpoint_every = 20_000
    config.train.stop_at = 0  # > 0: checkpoint and stop at this step (time-limited jobs)
    config.train.keep_checkpoints = 1  # newest checkpoints kept (>= 1)
    config.train.image_every = 1_000  # debug panels; 0 = never
    config.train.init = ""  # an `lcmsm-convert` workdir to start from
    config.train.pretrained = ""  # ImageNet MiT checkpoint (mit_b5.pth) for the backbone
    # lcmsm-demo only (lcmsm-train trains the run alone): ladder methods (lcmsm_jax/methods.py)
    # trained afterwards with the same seed in <workdir>/baselines/<method> and tabulated next
    # to this run (the demo: source_only).
    config.train.compare_with = ()

    config.eval = ml_collections.ConfigDict()
    config.eval.mode = "slide"  # slide | whole
    config.eval.crop = (512, 512)
    config.eval.stride = (256, 256)
    config.eval.head = "decode"  # the reference evaluates the student's DAFormer head
    config.eval.weights = "student"  # student | teacher

    config.mesh = ml_collections.ConfigDict()
    config.mesh.data = -1  # devices on the data axis (-1 = all)
    # Shard parameters and optimiser state over the data axis too (FSDP / ZeRO-3); off: the
    # MiT-B5 LC-MSM state is ~2.2 GB per device, activations dominate.
    config.mesh.fsdp = False
    # Multi-process start-up (lcmsm_jax/sharding.py; docs/scaling.md): every process runs the
    # same command. auto | single | explicit | slurm | tpu (auto: the first one set up).
    config.mesh.cluster = "auto"
    config.mesh.coordinator = ""  # explicit: host:port of process 0 (or $LCMSM_COORDINATOR)
    config.mesh.num_processes = 0  # explicit: process count (or $LCMSM_NUM_PROCESSES)
    config.mesh.process_id = -1  # explicit: this process (or $LCMSM_PROCESS_ID)
    config.mesh.slurm_process_per = "auto"  # gpu | node | auto (node when 1 task per node)
    config.mesh.init_timeout = 60  # seconds for every process to join, then stop with an error
    # Seconds the processes wait for the slowest one after compiling a program, before its
    # first collective (lcmsm_jax/peers.py); then the run stops naming the late process.
    config.mesh.peer_timeout = 1800
    return config
