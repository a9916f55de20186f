"""The DALI loader: executes a :class:`~ferfast.data.plan.LoaderPlan` in a DALI pipeline.

ferfast's Python source (an ``fn.external_source`` callback) reads each batch's encoded images,
probes them (displayed size, completeness), resolves the crop windows and flips the plan drew and
moves the face boxes through them; a reader thread does this a few batches ahead, in step order, so
files are read off the training thread and the batches stay a pure function of the seed. The
pipeline decodes (``mixed``, on the GPU, when there is one; else on the CPU; EXIF orientation applied,
as every ferfast decoder does), crops and resizes in one ``fn.resize`` (ROI, bicubic), applies
RandAugment to the strong view (``nvidia.dali.auto_aug``), and flips with ``fn.crop_mirror_normalize``,
which writes uint8 CHW: normalisation happens on the training device
(:func:`ferfast.data.normalize_images`). DALI cannot report the window its own ``random_resized_crop``
chose, which is why the windows come from ferfast (docs/design.md).

A file that still fails in DALI's decoder aborts the pipeline; the loader then decodes the batches in
flight with PIL: a file PIL cannot decode either (corrupt data behind intact markers) is skipped; a
file only DALI's decoder refuses (a JPEG the GPU decoder rejects, a format DALI lacks) is from then on
decoded by PIL on the CPU and handed to DALI losslessly re-encoded (warned once, naming the file). The
loader rebuilds the pipeline and carries on from the same step: the epoch is not lost.

Hand-off to torch, without host synchronisation: GPU outputs are requested on torch's current stream
(``Pipeline.run(cuda_stream)``, DALI's dynamic executor) and wrapped without a copy (DLPack); they are
ready, and their memory is returned to DALI, in that stream's order, and the loader keeps each batch's
DALI buffers referenced until a CUDA event recorded on that stream at the next draw has completed.
CPU outputs are wrapped without a copy too (the dynamic executor never reuses a buffer that is still
referenced), or copied once into page-locked memory with ``pin_memory=True``.
"""

from __future__ import annotations

import importlib.util
import io
import os
import warnings
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ferfast.data.augment import transform_boxes
from ferfast.data.check import SkipCounter, UnreadableImageError, check_image, decode_rgb
from ferfast.data.imageio import read_probed
from ferfast.data.normalize import normalize_batch
from ferfast.data.plan import VIEWS, LoaderPlan, PlanLoader

__all__ = ["DaliFaceLoader", "dali_available", "decoder_rejects", "load_plugin", "plugin_path"]

#: timm's RandAugment magnitude (0-10) onto DALI's ``num_magnitude_bins`` bins.
_RA_BINS = 31
#: GPU batches whose DALI buffers the loader keeps referenced while torch's stream may still read them; beyond
#: this many unfinished batches the oldest one's event is waited for (the GPU is that far behind the host).
_MAX_HELD = 8


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


def _decoder_kwargs(types) -> dict:
    """The image decoder's arguments, shared by the loader's pipeline and :func:`decoder_rejects`."""
    return dict(output_type=types.RGB, adjust_orientation=True)  # EXIF orientation: ferfast's one rule


def decoder_rejects(blobs: list[np.ndarray], device: str) -> list[bool]:
    """Which encoded images DALI's image decoder on ``device`` (``"cpu"`` or ``"gpu"``: ``mixed``) refuses.

    Decodes them in small throw-away pipelines, halving a failing group until each refused image is found
    (a refused image aborts a whole DALI batch). Used after a pipeline failure that PIL cannot explain.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from nvidia.dali import fn, pipeline_def, types

    gpu = device == "gpu"

    def decodes(group: list[np.ndarray]) -> bool:
        @pipeline_def(
            batch_size=len(group),
            num_threads=1,
            device_id=torch.cuda.current_device() if gpu else None,
            prefetch_queue_depth=1,
            exec_dynamic=True,
        )
        def pipe():
            enc = fn.external_source(source=lambda: list(group), batch=True)
            return fn.decoders.image(enc, device="mixed" if gpu else "cpu", **_decoder_kwargs(types))

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                p = pipe()
                p.build()
                p.run()
        except RuntimeError:
            return False
        return True

    refused = [False] * len(blobs)

    def visit(lo: int, hi: int) -> None:
        if hi <= lo or decodes(blobs[lo:hi]):
            return
        if hi - lo == 1:
            refused[lo] = True
            return
        mid = (lo + hi) // 2
        visit(lo, mid)
        visit(mid, hi)

    visit(0, len(blobs))
    return refused


def _reencode_lossless(pixels: np.ndarray) -> bytes:
    """HWC uint8 RGB pixels as a PNG (fast, lossless, no EXIF): what DALI decodes for a file it refused."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


class _Source:
    """The pipeline's ``external_source`` callback: one call per batch, in plan order.

    :meth:`prepare` builds a step's inputs (reads, probes, draws); with ``lookahead > 0`` one reader
    thread prepares the next ``lookahead`` steps, in order, while the current one is processed, so the
    callback only collects a finished result (files are read off the training thread; one thread keeps
    the skip bookkeeping, and so the batches, identical to a sequential run).
    """

    def __init__(self, plan: LoaderPlan, outputs: list[tuple], lookahead: int = 2) -> None:
        self.plan = plan
        self.outputs = outputs  # (kind, stream, view) per pipeline input, in order
        self.lookahead = int(lookahead)
        self.skipped = SkipCounter(f"images in the DALI loader ({plan.stage})")
        self.bad: list[set[int]] = [set() for _ in plan.streams]  # per stream: indices found unreadable
        #: per stream: indices DALI's decoder refuses but PIL reads; fed to DALI as PIL-decoded, re-encoded PNGs
        self.cpu_decode: list[set[int]] = [set() for _ in plan.streams]
        self.epoch = 0
        self.step = 0
        self._cache: dict = {}
        self.in_flight: list[tuple[int, list[np.ndarray]]] = []
        self._pool: ThreadPoolExecutor | None = None
        self._futures: deque[Future] = deque()
        self._submitted = 0

    def start(self, epoch: int, step: int) -> None:
        """Start (or restart) at ``step`` of ``epoch``: stops the reader first, so no old step lands afterwards."""
        self.stop()
        self.epoch, self.step, self._submitted = epoch, step, step
        self.in_flight = []

    def stop(self) -> None:
        """Cancel the steps read ahead and wait for the one being read (the reader touches the skip sets)."""
        for f in self._futures:
            f.cancel()
        for f in self._futures:
            if not f.cancelled():
                try:
                    f.result()
                except BaseException:  # its error belongs to a step that will be read again
                    pass
        self._futures.clear()

    def close(self) -> None:
        """Stop the reader thread."""
        self.stop()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _fill(self) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ferfast-dali-reader")
        while len(self._futures) < self.lookahead and self._submitted < len(self.plan):
            self._futures.append(self._pool.submit(self.prepare, self.epoch, self._submitted))
            self._submitted += 1

    def __call__(self) -> tuple:
        if self.step >= len(self.plan):
            raise StopIteration
        if self.lookahead <= 0:
            out = self.prepare(self.epoch, self.step)
        else:
            self._fill()
            future = self._futures.popleft()
            self._fill()  # keep `lookahead` steps being read while this one is decoded and trained on
            out = future.result()
        self.step += 1
        return out

    def _read(self, stream: int, i: int) -> tuple[int, np.ndarray, tuple[int, int]]:
        ds = self.plan.streams[stream].dataset
        for _ in range(8):
            j, data, size = read_probed(ds, i, self.skipped, self.bad[stream])
            if j not in self.cpu_decode[stream]:
                return j, np.frombuffer(data, dtype=np.uint8), size
            try:  # DALI's decoder refuses it: PIL decodes (EXIF orientation applied), DALI gets lossless pixels
                data = _reencode_lossless(decode_rgb(data, str(ds.files[j])))
                return j, np.frombuffer(data, dtype=np.uint8), size
            except UnreadableImageError as e:
                self.bad[stream].add(j)
                self.skipped.skip(str(ds.files[j]), str(e))
                i = (j + 1) % len(ds)
        raise UnreadableImageError(f"{ds.name}: too many unreadable images near {ds.files[i]}")

    def prepare(self, epoch: int, step: int) -> tuple:
        """The pipeline inputs of ``step`` of ``epoch``: encoded images, windows, flips, boxes, labels, indices."""
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
                out.append(
                    list(np.stack([windows[:, 1] + windows[:, 3], windows[:, 0] + windows[:, 2]], 1).astype(np.float32))
                )
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

    Images come out as uint8 ``[B, 3, S, S]`` (see :mod:`ferfast.data.plan` for the batch format).

    Args:
        plan: what to load (see :func:`ferfast.data.build_loader`).
        device: ``"cpu"`` (decode and augment on the CPU) or ``"gpu"`` (``mixed`` decoding, GPU ops; images are
            returned on the current CUDA device, ready in order on the stream that is current when a batch is
            drawn, with no host synchronisation; labels/boxes/indices on the CPU, page-locked).
        num_threads: DALI CPU threads (default: all cores of this process).
        prefetch_queue_depth: batches prepared ahead.
        use_plugin: on the CPU, use ferfast's DALI operators when built (False: DALI's own ``fn.resize``,
            ``auto_aug.rand_augment`` and ``fn.crop_mirror_normalize``, slower; as on a machine without them).
        pin_memory: CPU outputs are copied once into page-locked memory (for ``.to("cuda", non_blocking=True)``);
            needs CUDA, ignored without it. Else they are DALI's buffers, wrapped without a copy.
        normalize: float32 normalised images (the old batch format, on the images' device) instead of uint8.
        read_ahead: steps whose files a reader thread reads and probes ahead (0: in the pipeline's callback,
            on the training thread).
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
        pin_memory: bool = False,
        normalize: bool = False,
        read_ahead: int = 2,
    ) -> None:
        if device not in ("cpu", "gpu"):
            raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
        if device == "gpu" and not torch.cuda.is_available():
            raise ValueError("device='gpu' needs a CUDA GPU; use device='cpu'")
        if not dali_available():
            raise ImportError("the DALI loader needs NVIDIA DALI: pip install 'ferfast[dali-cu13]' (or dali-cu12)")
        if not (isinstance(read_ahead, int) and read_ahead >= 0):
            raise ValueError(f"read_ahead must be an int >= 0, got {read_ahead!r}")
        super().__init__(plan)
        self.device = device
        self.num_threads = num_threads or max(1, len(os.sched_getaffinity(0)))
        self.prefetch_queue_depth = prefetch_queue_depth
        self.fused = device == "cpu" and use_plugin and load_plugin()
        self.pin_memory = (bool(pin_memory) or device == "gpu") and torch.cuda.is_available()
        self.normalize = bool(normalize)
        inputs, self._names = _pipeline_outputs(plan, self.fused)
        self._source = _Source(plan, inputs, lookahead=read_ahead)
        self._pipe = None
        self._drained = True  # False while an iteration is under way (its batches are queued in the pipeline)
        self._held: deque[tuple[torch.cuda.Event, tuple]] = deque()  # GPU batches torch's stream may still read
        self._last: tuple | None = None  # the DALI outputs of the batch handed out last (GPU)

    # -- the pipeline ---------------------------------------------------------------------------
    def _build(self):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from nvidia.dali import fn, pipeline_def, types
            from nvidia.dali.auto_aug import rand_augment
        plan = self.plan
        inputs = self._source.outputs
        gpu = self.device == "gpu"
        bs = max(s.batches.batch_size for s in plan.streams)

        @pipeline_def(
            batch_size=bs,
            num_threads=self.num_threads,
            device_id=torch.cuda.current_device() if gpu else None,
            prefetch_queue_depth=self.prefetch_queue_depth,
            exec_dynamic=True,  # outputs stay valid while referenced, and can be bound to a CUDA stream
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
                        decoded[k] = fn.decoders.image(enc, device="mixed" if gpu else "cpu", **_decoder_kwargs(types))
                    outs.append(self._view(fn, types, rand_augment, decoded[k], by_key, k, v))
                elif kind in ("boxes", "index", "labels", "soft_labels"):
                    outs.append(node)
            return tuple(outs)

        with warnings.catch_warnings():  # auto_aug still calls operators by their deprecated experimental names
            warnings.simplefilter("ignore", DeprecationWarning)
            p = pipe()
            p.build()
        return p

    def _view(self, fn, types, rand_augment, img, by_key, k, view):
        """One view of decoded images: crop + resize + [RandAugment] + flip, as uint8 CHW (no normalisation).

        CPU: ferfast's operators when the plugin is built (``fn.ferfast_resized_crop_normalize`` with
        ``dtype=UINT8``; for the strong view ``fn.ferfast_rand_augment`` with the plan's ops and magnitudes, on
        the crop before it is upscaled, as in the torch loader), else DALI's ``fn.resize`` (ROI, bicubic) +
        ``auto_aug.rand_augment`` + ``fn.crop_mirror_normalize`` (flip and CHW only). GPU: ``fn.resize`` +
        DALI's RandAugment on the resized view (SSFER's order; its own draws) + ``fn.crop_mirror_normalize``.
        """
        cfg = self.plan.config
        size = cfg.image_size
        ra = cfg.rand_augment
        strong = view == "strong" and ra.num_ops > 0
        ra_kw = dict(n=ra.num_ops, m=round(ra.magnitude / 10.0 * (_RA_BINS - 1)), num_magnitude_bins=_RA_BINS)
        window, mirror = by_key[("window", k, view)], by_key[("mirror", k, view)]
        cmn = dict(mirror=mirror, dtype=types.UINT8, output_layout="CHW")  # no mean/std: a flip and a transpose
        fused = dict(size=size, dtype=types.UINT8, output_layout="CHW")
        resize = dict(size=[size, size], interp_type=types.INTERP_CUBIC, antialias=True)
        if strong and self.device == "cpu":  # cut the crop out, RandAugment it at its own resolution
            img = fn.slice(
                img, window[0:2], window[2:4], axis_names="WH", normalized_anchor=False, normalized_shape=False
            )
            if self.fused:  # ferfast's RandAugment operator, with the plan's ops and magnitudes
                img = fn.ferfast_rand_augment(img, by_key[("ra_ops", k, view)], by_key[("ra_mags", k, view)])
                return fn.ferfast_resized_crop_normalize(img, by_key[("window0", k, view)], mirror, **fused)
            img = rand_augment.rand_augment(img, shape=img.shape(dtype=types.INT32)[0:2], **ra_kw)
            return fn.crop_mirror_normalize(fn.resize(img, **resize), **cmn)
        if self.fused:
            return fn.ferfast_resized_crop_normalize(img, window, mirror, **fused)
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

    def _retire(self) -> None:
        """Release the DALI buffers of GPU batches that torch's stream has finished with (called at each draw).

        The batch handed out last gets an event on the current stream now: whatever the caller queued on it
        for that batch comes before. Batches whose event has completed are released; past ``_MAX_HELD``
        unfinished ones the oldest event is waited for (the GPU is that many batches behind the host).
        """
        if self.device != "gpu":
            return
        if self._last is not None:
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream())
            self._held.append((event, self._last))
            self._last = None
        while self._held and self._held[0][0].query():
            self._held.popleft()
        while len(self._held) > _MAX_HELD:
            self._held.popleft()[0].synchronize()

    def _run(self) -> tuple:
        """One batch of pipeline outputs; on the GPU bound to torch's current stream (no host synchronisation)."""
        if self.device == "gpu":
            return self._pipe.run(torch.cuda.current_stream())
        return self._pipe.run()

    def _to_torch(self, outputs) -> dict:
        """The pipeline's outputs as torch tensors (images uint8, boxes/soft labels float32, the rest int64).

        GPU outputs are wrapped without a copy (DLPack; ready on the stream :meth:`_run` bound them to), and the
        outputs are kept referenced until :meth:`_retire` sees that stream past the batch. CPU outputs are wrapped
        without a copy (DALI's dynamic executor does not reuse a buffer while the tensor references it) or, with
        ``pin_memory``, copied once into page-locked memory torch owns.
        """
        batch = {}
        for name, tl in zip(self._names, outputs):
            on_gpu = type(tl).__name__.endswith("GPU")
            tensor = tl.as_tensor()  # one dense tensor (all views have the same shape)
            if name.startswith("images"):
                dtype = torch.uint8
            elif name.startswith(("boxes", "soft_labels")):
                dtype = torch.float32
            else:
                dtype = torch.int64
            if on_gpu:
                t = torch.from_dlpack(tensor)
            else:
                t = torch.from_numpy(np.asarray(tensor))
            if t.dtype != dtype:
                t = t.to(dtype)
            if name in ("index", "labels") or name.startswith("index_"):
                t = t.view(-1)
            if not on_gpu and self.pin_memory:
                t = t.pin_memory()
            batch[name] = t
        if self.device == "gpu":
            self._last = outputs
        return normalize_batch(batch, self.plan.config.mean, self.plan.config.std) if self.normalize else batch

    def _recover(self) -> int:
        """After a pipeline failure: fully decode the batches in flight with PIL; skip what PIL cannot decode, and
        send what only DALI's decoder refuses through PIL from now on (warned once per file). Returns how many
        files it found (0: the failure is not a file's)."""
        found = 0
        suspects: list[tuple[int, int, np.ndarray]] = []
        for _step, per_stream in self._source.in_flight:
            for k, used in enumerate(per_stream):
                ds, bad, cpu = self.plan.streams[k].dataset, self._source.bad[k], self._source.cpu_decode[k]
                for j in map(int, used):
                    if j in bad or j in cpu:
                        continue
                    data = ds.read_bytes(j)
                    reason = check_image(data)
                    if reason is not None:
                        bad.add(j)
                        self._source.skipped.skip(str(ds.files[j]), f"DALI could not decode it ({reason})")
                        found += 1
                    elif all((k, j) != (s[0], s[1]) for s in suspects):
                        suspects.append((k, j, np.frombuffer(data, dtype=np.uint8)))
        if found or not suspects:
            return found
        for (k, j, _), refused in zip(suspects, decoder_rejects([s[2] for s in suspects], self.device)):
            if refused:
                self._source.cpu_decode[k].add(j)
                name = self.plan.streams[k].dataset.files[j]
                warnings.warn(
                    f"DALI's {self.device} image decoder refuses {name}, which PIL reads: decoding it with "
                    "PIL on the CPU from now on",
                    RuntimeWarning,
                    stacklevel=3,
                )
                found += 1
        return found

    def __iter__(self) -> Iterator[dict]:
        step = self.start_step
        if self._pipe is None or not self._drained:  # a pipeline left mid-epoch still queues that epoch's batches
            self._source.stop()
            self._pipe = self._build()
        self._drained = False
        self._source.start(self.epoch, step)
        while step < len(self.plan):
            self._retire()
            try:
                outputs = self._run()
            except StopIteration:
                break
            except RuntimeError as e:
                self._source.stop()
                if self._recover() == 0:
                    raise
                warnings.warn(
                    f"DALI pipeline restarted at step {step} after an image it could not decode: {str(e)[:200]}",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self._pipe = self._build()
                self._source.start(self.epoch, step)
                continue
            step += 1
            yield self._to_torch(outputs)
        # Drain and rewind for the next epoch.
        self._source.stop()
        try:
            self._pipe.reset()
            self._drained = True
        except Exception:
            self._pipe = None

    def close(self) -> None:
        """Stop the reader thread and drop the pipeline (a later iteration builds a new one)."""
        self._source.close()
        self._pipe = None
        self._held.clear()
        self._last = None
