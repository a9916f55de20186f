"""The DALI loader: executes a :class:`~ferfast.data.plan.LoaderPlan` in a DALI pipeline.

ferfast's Python source (an ``fn.external_source`` callback) reads each batch's encoded images,
probes them (size, completeness), resolves the crop windows and flips the plan drew and moves the
face boxes through them; the pipeline decodes (``mixed``, on the GPU, when there is one; else on
the CPU), crops and resizes in one ``fn.resize`` (ROI, bicubic), applies RandAugment to the strong
view (``nvidia.dali.auto_aug``), and flips and normalises with ``fn.crop_mirror_normalize``. DALI
cannot report the window its own ``random_resized_crop`` chose, which is why the windows come
from ferfast (DESIGN.md section 3).

A file that still fails in DALI's decoder (corrupt data behind intact markers) aborts the
pipeline; the loader then finds it by decoding the batches in flight with PIL, skips it, rebuilds
the pipeline and carries on from the same step: the epoch is not lost.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ferfast.data.augment import transform_boxes
from ferfast.data.check import SkipCounter, check_image
from ferfast.data.imageio import read_probed
from ferfast.data.plan import VIEWS, LoaderPlan, PlanLoader

__all__ = ["DaliFaceLoader", "dali_available", "load_plugin", "plugin_path"]

#: timm's RandAugment magnitude (0-10) onto DALI's ``num_magnitude_bins`` bins.
_RA_BINS = 31


_PLUGIN: dict[str, object] = {}


def plugin_path() -> Path | None:
    """Where ferfast's DALI operator plugin (``libferfast_dali.so``) is, next to ``ferfast._C``; None if not built."""
    spec = importlib.util.find_spec("ferfast._C")
    candidates = [Path(__file__).resolve().parent.parent / "libferfast_dali.so"]
    if spec is not None and spec.origin:
        candidates.insert(0, Path(spec.origin).with_name("libferfast_dali.so"))
    return next((p for p in candidates if p.is_file()), None)


def load_plugin() -> bool:
    """Load ferfast's fused crop-resize-flip-normalise DALI operator once; False (with the reason kept) if absent.

    ``FERFAST_DALI_PLUGIN=0`` turns it off (the pipeline then uses DALI's own ``fn.resize`` and
    ``fn.crop_mirror_normalize``).
    """
    if "loaded" in _PLUGIN:
        return bool(_PLUGIN["loaded"])
    path = plugin_path()
    if os.environ.get("FERFAST_DALI_PLUGIN", "1") == "0":
        _PLUGIN.update(loaded=False, error="disabled by FERFAST_DALI_PLUGIN=0")
    elif path is None:
        _PLUGIN.update(loaded=False, error="libferfast_dali.so is not built (DALI was not installed at build time)")
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                import nvidia.dali.plugin_manager as plugin_manager

            plugin_manager.load_library(str(path))
            _PLUGIN.update(loaded=True, error=None)
        except Exception as e:  # wrong DALI version, missing symbols
            _PLUGIN.update(loaded=False, error=f"cannot load {path}: {e}")
            warnings.warn(f"ferfast: {_PLUGIN['error']}; using DALI's own resize", RuntimeWarning, stacklevel=2)
    return bool(_PLUGIN["loaded"])


def dali_available() -> bool:
    """Whether NVIDIA DALI can be imported (``pip install ferfast[dali-cu13]``)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


class _Source:
    """The pipeline's ``external_source`` callback: one call per batch, in plan order."""

    def __init__(self, plan: LoaderPlan, outputs: list[tuple]) -> None:
        self.plan = plan
        self.outputs = outputs  # (kind, stream, view) per pipeline input, in order
        self.skipped = SkipCounter(f"images in the DALI loader ({plan.stage})")
        self.bad: list[set[int]] = [set() for _ in plan.streams]  # per stream: indices found unreadable
        self.epoch = 0
        self.step = 0
        self._cache: dict = {}
        self.in_flight: list[tuple[int, list[np.ndarray]]] = []

    def start(self, epoch: int, step: int) -> None:
        self.epoch, self.step = epoch, step
        self.in_flight = []

    def _read(self, stream: int, i: int) -> tuple[int, np.ndarray, tuple[int, int]]:
        j, data, size = read_probed(self.plan.streams[stream].dataset, i, self.skipped, self.bad[stream])
        return j, np.frombuffer(data, dtype=np.uint8), size

    def __call__(self) -> tuple:
        if self.step >= len(self.plan):
            raise StopIteration
        epoch, step = self.epoch, self.step
        self.step += 1
        indices = self.plan.step_indices(epoch, step, self._cache)
        per_stream = []
        for k, idx in enumerate(indices):
            reads = [self._read(k, int(i)) for i in idx]
            used = np.array([r[0] for r in reads], np.int64)
            sizes = np.array([r[2] for r in reads], np.int64)
            per_stream.append((used, [r[1] for r in reads], sizes))
        self.in_flight.append((step, [p[0] for p in per_stream]))
        del self.in_flight[:-8]
        cfg = self.plan.config
        out = []
        view_cache: dict = {}
        for kind, k, view in self.outputs:
            used, enc, sizes = per_stream[k]
            ds = self.plan.streams[k].dataset
            if kind == "encoded":
                out.append(enc)
                continue
            if kind == "index":
                out.append(list(used[:, None]))
                continue
            if kind == "labels":
                out.append(list(ds.labels[used][:, None]))
                continue
            if kind == "soft_labels":
                out.append(list(ds.soft_labels[used]))
                continue
            if (k, view) not in view_cache:
                draws = self.plan.view_draws(epoch, step, k, view, len(used))
                windows = draws.windows(sizes, cfg)
                flip = draws.flip if draws.flip is not None else np.zeros(len(used), bool)
                if (k, "rel") not in view_cache:
                    view_cache[(k, "rel")] = ds.relative_boxes_many(used, sizes)
                rel = view_cache[(k, "rel")]
                ra = draws.rand_augment(windows, cfg)
                view_cache[(k, view)] = (windows, flip, transform_boxes(rel, sizes, windows, flip), ra)
            windows, flip, boxes, ra = view_cache[(k, view)]
            if kind == "roi_start":  # DALI's ROI follows the layout's spatial order: (y, x)
                out.append(list(np.stack([windows[:, 1], windows[:, 0]], 1).astype(np.float32)))
            elif kind == "roi_end":
                out.append(list(np.stack([windows[:, 1] + windows[:, 3], windows[:, 0] + windows[:, 2]], 1)
                                .astype(np.float32)))
            elif kind == "window":  # (left, top, width, height) in pixels
                out.append(list(windows.astype(np.float32)))
            elif kind == "window0":  # the whole crop, once it has been cut out: (0, 0, width, height)
                w0 = windows.astype(np.float32).copy()
                w0[:, :2] = 0
                out.append(list(w0))
            elif kind == "ra_ops":  # RandAugment's draws, made by the plan (the torch loader applies the same)
                out.append(list(ra.ops))
            elif kind == "ra_mags":
                out.append(list(ra.magnitudes))
            elif kind == "mirror":
                out.append(list(flip.astype(np.int32)[:, None]))
            elif kind == "boxes":
                out.append(list(boxes))
        return tuple(out)


def _pipeline_outputs(plan: LoaderPlan, fused: bool) -> tuple[list[tuple], list[str]]:
    """The pipeline's inputs (kind, stream, view) and its named outputs, in order.

    ``fused``: the views use ferfast's operator (windows); else DALI's ``fn.resize`` (ROIs).
    """
    inputs: list[tuple] = []
    names: list[str] = []
    for k, s in enumerate(plan.streams):
        inputs.append(("encoded", k, None))
        for v in s.views:
            inputs += [("window", k, v), ("mirror", k, v)]
            if fused and v == "strong" and plan.config.rand_augment.num_ops > 0:
                inputs += [("window0", k, v), ("ra_ops", k, v), ("ra_mags", k, v)]
            inputs += [] if fused else [("roi_start", k, v), ("roi_end", k, v)]
            if VIEWS[v][1] is not None:
                inputs.append(("boxes", k, v))
        inputs.append(("index", k, None))
        if s.with_labels:
            inputs.append(("labels", k, None))
            if s.dataset.soft_labels is not None:
                inputs.append(("soft_labels", k, None))
    for kind, k, v in inputs:
        s = plan.streams[k]
        if kind == "window":
            names.append(VIEWS[v][0])
        elif kind == "boxes":
            names.append(VIEWS[v][1])
        elif kind == "index":
            names.append(s.index_key)
        elif kind in ("labels", "soft_labels"):
            names.append(kind)
    return inputs, names


class DaliFaceLoader(PlanLoader):
    """Iterates the batches of a :class:`LoaderPlan` with a DALI pipeline (CPU, or GPU with ``device="gpu"``).

    Args:
        plan: what to load (see :func:`ferfast.data.build_loader`).
        device: ``"cpu"`` (decode and augment on the CPU) or ``"gpu"`` (``mixed`` decoding, GPU ops;
            images are returned on the current CUDA device, labels/boxes/indices on the CPU).
        num_threads: DALI CPU threads (default: all cores of this process).
        prefetch_queue_depth: batches prepared ahead.
        use_plugin: on the CPU, use ferfast's DALI operators when built (False: DALI's own ``fn.resize``,
            ``auto_aug.rand_augment`` and ``fn.crop_mirror_normalize``, slower; as on a machine without them).
    """

    backend = "dali"

    def __init__(
        self,
        plan: LoaderPlan,
        *,
        device: str = "cpu",
        num_threads: int | None = None,
        prefetch_queue_depth: int = 2,
        use_plugin: bool = True,
    ) -> None:
        if device not in ("cpu", "gpu"):
            raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
        if device == "gpu" and not torch.cuda.is_available():
            raise ValueError("device='gpu' needs a CUDA GPU; use device='cpu'")
        if not dali_available():
            raise ImportError("the DALI loader needs NVIDIA DALI: pip install 'ferfast[dali-cu13]' (or dali-cu12)")
        super().__init__(plan)
        self.device = device
        self.num_threads = num_threads or max(1, len(os.sched_getaffinity(0)))
        self.prefetch_queue_depth = prefetch_queue_depth
        self.fused = device == "cpu" and use_plugin and load_plugin()
        inputs, self._names = _pipeline_outputs(plan, self.fused)
        self._source = _Source(plan, inputs)
        self._pipe = None

    # -- the pipeline ---------------------------------------------------------------------------
    def _build(self):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from nvidia.dali import fn, pipeline_def, types
            from nvidia.dali.auto_aug import rand_augment
        plan, cfg = self.plan, self.plan.config
        inputs = self._source.outputs
        gpu = self.device == "gpu"
        bs = max(s.batches.batch_size for s in plan.streams)
        mean = [m * 255.0 for m in cfg.mean]
        std = [s * 255.0 for s in cfg.std]
        @pipeline_def(
            batch_size=bs,
            num_threads=self.num_threads,
            device_id=torch.cuda.current_device() if gpu else None,
            prefetch_queue_depth=self.prefetch_queue_depth,
            exec_dynamic=True,  # outputs stay valid while referenced: batches are handed over without a copy
            enable_conditionals=not self.fused and any("strong" in s.views for s in plan.streams),
            seed=int(plan.seed) & 0x7FFFFFFF,
        )
        def pipe():
            nodes = fn.external_source(source=self._source, num_outputs=len(inputs), batch=True)
            by_key = dict(zip(inputs, nodes))
            decoded: dict[int, object] = {}
            outs = []
            for kind, k, v in inputs:
                node = by_key[(kind, k, v)]
                if kind == "window":
                    if k not in decoded:  # decode once per stream; its views share the image
                        enc = by_key[("encoded", k, None)]
                        decoded[k] = fn.decoders.image(enc, device="mixed" if gpu else "cpu", output_type=types.RGB)
                    outs.append(self._view(fn, types, rand_augment, decoded[k], by_key, k, v, mean, std))
                elif kind in ("boxes", "index", "labels", "soft_labels"):
                    outs.append(node)
            return tuple(outs)

        with warnings.catch_warnings():  # auto_aug still calls operators by their deprecated experimental names
            warnings.simplefilter("ignore", DeprecationWarning)
            p = pipe()
            p.build()
        return p

    def _view(self, fn, types, rand_augment, img, by_key, k, view, mean, std):
        """One view of decoded images: crop + resize + [RandAugment] + flip + normalise.

        CPU: ferfast's operators when the plugin is built (``fn.ferfast_resized_crop_normalize``; for the
        strong view ``fn.ferfast_rand_augment`` with the plan's ops and magnitudes, on the crop before it
        is upscaled, as in the torch loader), else DALI's ``fn.resize`` (ROI, bicubic) +
        ``auto_aug.rand_augment`` + ``fn.crop_mirror_normalize``. GPU: ``fn.resize`` + DALI's RandAugment
        on the resized view (SSFER's order; its own draws) + ``fn.crop_mirror_normalize``.
        """
        cfg = self.plan.config
        size = cfg.image_size
        ra = cfg.rand_augment
        strong = view == "strong" and ra.num_ops > 0
        ra_kw = dict(n=ra.num_ops, m=round(ra.magnitude / 10.0 * (_RA_BINS - 1)), num_magnitude_bins=_RA_BINS)
        window, mirror = by_key[("window", k, view)], by_key[("mirror", k, view)]
        cmn = dict(mirror=mirror, dtype=types.FLOAT, output_layout="CHW", mean=mean, std=std)
        resize = dict(size=[size, size], interp_type=types.INTERP_CUBIC, antialias=True)
        if strong and self.device == "cpu":  # cut the crop out, RandAugment it at its own resolution
            img = fn.slice(img, window[0:2], window[2:4], axis_names="WH", normalized_anchor=False,
                           normalized_shape=False)
            if self.fused:  # ferfast's RandAugment operator, with the plan's ops and magnitudes
                img = fn.ferfast_rand_augment(img, by_key[("ra_ops", k, view)], by_key[("ra_mags", k, view)])
                return fn.ferfast_resized_crop_normalize(img, by_key[("window0", k, view)], mirror, size=size,
                                                         mean=mean, std=std)
            img = rand_augment.rand_augment(img, shape=img.shape(dtype=types.INT32)[0:2], **ra_kw)
            return fn.crop_mirror_normalize(fn.resize(img, **resize), **cmn)
        if self.fused:
            return fn.ferfast_resized_crop_normalize(img, window, mirror, size=size, mean=mean, std=std)
        roi = dict(roi_start=by_key[("roi_start", k, view)], roi_end=by_key[("roi_end", k, view)], roi_relative=False)
        img = fn.resize(img, **resize, **roi)
        if strong:  # on the GPU: RandAugment after the resize, SSFER's order
            img = rand_augment.rand_augment(img, shape=[size, size], **ra_kw)
        return fn.crop_mirror_normalize(img, **cmn)

    # -- iteration ------------------------------------------------------------------------------
    @property
    def skipped(self) -> int:
        """Images skipped as unreadable so far."""
        return self._source.skipped.count

    def _to_torch(self, outputs) -> dict:
        """The pipeline's outputs as torch tensors.

        CPU outputs are handed over without a copy: DALI's dynamic executor never reuses an output
        buffer while something references it, and the tensor keeps it referenced (through numpy's
        array interface), so a batch stays valid however long it is kept. GPU outputs are copied into
        torch's memory on the current stream (DALI's ``feed_ndarray``).
        """
        from nvidia.dali.plugin.pytorch import feed_ndarray

        batch = {}
        dev = torch.device("cuda", torch.cuda.current_device()) if self.device == "gpu" else None
        for name, tl in zip(self._names, outputs):
            on_gpu = type(tl).__name__.endswith("GPU")
            tl = tl.as_tensor()  # one dense tensor (all views have the same shape)
            dtype = torch.float32 if name.startswith(("images", "boxes", "soft_labels")) else torch.int64
            if on_gpu:
                t = torch.empty(tl.shape(), dtype=dtype, device=dev)
                feed_ndarray(tl, t, cuda_stream=torch.cuda.current_stream())
            else:
                t = torch.from_numpy(np.asarray(tl))
                if t.dtype != dtype:
                    t = t.to(dtype)
            if name in ("index", "labels") or name.startswith("index_"):
                t = t.view(-1)
            batch[name] = t
        return batch

    def _find_undecodable(self) -> int:
        """Fully decode the batches in flight (:func:`~ferfast.data.check.check_image`); mark what fails as
        unreadable; return how many."""
        found = 0
        for _step, per_stream in self._source.in_flight:
            for k, used in enumerate(per_stream):
                ds, bad = self.plan.streams[k].dataset, self._source.bad[k]
                for j in map(int, used):
                    if j in bad:
                        continue
                    reason = check_image(ds.read_bytes(j))
                    if reason is not None:
                        bad.add(j)
                        self._source.skipped.skip(str(ds.files[j]), f"DALI could not decode it ({reason})")
                        found += 1
        return found

    def __iter__(self) -> Iterator[dict]:
        step = self.start_step
        if self._pipe is None:
            self._pipe = self._build()
        self._source.start(self.epoch, step)
        while step < len(self.plan):
            try:
                outputs = self._pipe.run()
            except StopIteration:
                break
            except RuntimeError as e:
                if self._find_undecodable() == 0:
                    raise
                warnings.warn(f"DALI pipeline restarted at step {step} after an undecodable image: {str(e)[:200]}",
                              RuntimeWarning, stacklevel=2)
                self._pipe = self._build()
                self._source.start(self.epoch, step)
                continue
            step += 1
            yield self._to_torch(outputs)
        # Drain and rewind for the next epoch.
        try:
            self._pipe.reset()
        except Exception:
            self._pipe = None
