"""Memory and reliability of the pipeline (issue 8): compact virtual follow-ups that read exactly as the pasted
volumes, the scene holding one int16 copy per shown time point (proxies share voxels, SD on the crop grid), the
response reading on the generated box, no memory left behind by a second case, and the CUDA out-of-memory fallback
to the CPU with a note in the result. Tiny grids and models; the numbers at full size are in
``benchmarks/results/pipeline_benchmark.md``."""

from __future__ import annotations

import gc
import tracemalloc

import numpy as np
import pytest

from HCCTwinLib.cases import Case, FollowUp, Geometry, store_rounded
from HCCTwinLib.pipeline import PipelineOptions, TwinResult, read_responses, run_case

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

from HCCTwinLib.twin import crop  # noqa: E402
from HCCTwinLib.twin.generator import Generator  # noqa: E402

REGIMENS = ["tace_pd1_len", "pd1_tki"]
TINY_CROP = (16, 24, 24)
TINY_ARCH = {"channels": [8, 16, 16], "attention_levels": [False, False, False], "num_res_blocks": 1,
             "norm_num_groups": 8}


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every test of this module on one torch thread (conftest ``one_torch_thread``)."""


def tiny_generator(seed: int = 0) -> Generator:
    gen = Generator.untrained(REGIMENS, TINY_CROP, TINY_ARCH, seed=seed, steps=2)
    torch.manual_seed(seed)
    with torch.no_grad():  # the zero-initialised output layer would give "no change": randomise it
        for p in gen.model.out.parameters():
            p.normal_(0.0, 0.2)
    return gen


def phantom_case(shape=(40, 64, 72), direction=None, seed=0) -> Case:
    """Liver block with a bright tumour sphere, off-centre, and background around it (the box is a part)."""
    rng = np.random.default_rng(seed)
    k, j, i = np.indices(shape, dtype=np.float32)
    labels = np.zeros(shape, np.uint8)
    labels[8:30, 14:50, 10:44] = 1
    labels[((k - 19) * 2) ** 2 + (j - 30) ** 2 + (i - 26) ** 2 <= 7.0 ** 2] = 2
    labels[((k - 22) * 2) ** 2 + (j - 40) ** 2 + (i - 34) ** 2 <= 3.0 ** 2] = 3
    art = np.select([labels == 1, labels == 2, labels == 3], [80.0, 170.0, 30.0], -90.0).astype(np.float32)
    art += rng.normal(0, 12, shape).astype(np.float32)
    por = (art * 0.8 + 20.0).astype(np.float32)
    geom = Geometry(shape=shape, spacing=(1.4, 1.4, 3.0), origin=(-40.0, -50.0, 12.0),
                    direction=direction or (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    return Case("MEM-1", {"arterial": art, "portal": por}, geom, labels=labels)


def _generate(case: Case, gen=None, weeks=(0, 8, 24), samples=3, seed=4):
    gen = gen or tiny_generator()
    return gen.generate(case, regimens=REGIMENS, weeks=weeks, samples=samples, seed=seed)


# -------------------------------------------------------------------------------------------- compact follow-ups
@pytest.mark.parametrize("direction", [None, (-1, 0, 0, 0, 1, 0, 0, 0, -1)], ids=["identity", "flipped"])
def test_compact_followups_read_exactly_as_the_pasted_volumes(direction):
    case = phantom_case(direction=direction)
    out = _generate(case)
    fu = out["tace_pd1_len"][24]
    assert isinstance(fu, crop.CropFollowUp) and isinstance(fu, FollowUp)
    ctx = fu.context
    box = ctx.box
    weight = crop.blend_weight(box, ctx.seam_mm)
    for c, p in enumerate(("arterial", "portal")):
        # phases and std are the paste-back of the stored crop, bit for bit
        expected = crop.paste_image(case.phases[p], box, fu.residual[c], weight=weight)
        assert fu.phases[p].tobytes() == expected.tobytes()
        std = np.zeros(case.geometry.shape, np.float32)
        std[box.slices] = np.maximum(crop.from_crop(fu.std_crop[c], box), 0.0) * weight
        assert fu.std[p].tobytes() == std.tobytes()
        # scene fill: int16, whole HU, within 0.5 HU of the float volume; region reads equal the slices
        filled = fu.fill_phase(p, np.empty(case.geometry.shape, np.int16))
        assert np.array_equal(filled, np.rint(expected).astype(np.int16))
        assert np.abs(filled - expected).max() <= 0.5 + 1e-4
        rounded_input = np.rint(case.phases[p]).astype(np.int16)  # what the scene's input volume holds
        assert np.array_equal(fu.fill_phase(p, np.empty_like(filled), rounded_input=rounded_input), filled)
        assert np.array_equal(fu.phase_region(p, box.slices), expected[box.slices])
        inner = (slice(box.lo[0] + 1, box.hi[0]), slice(0, case.geometry.shape[1]), slice(3, box.hi[2] - 2))
        assert np.array_equal(fu.phase_region(p, inner), expected[inner])
        sd, grid = fu.std_volume(p, case.geometry)
        assert grid == box.crop and sd.shape == TINY_CROP and sd.min() >= 0 and sd.max() > 0
    labels = crop.paste_labels(case.labels, box, fu.crop_labels, ctx.pre_crop_labels)
    assert np.array_equal(fu.labels, labels)
    assert np.array_equal(fu.labels_region(box.slices), labels[box.slices])
    assert np.array_equal(fu.label_counts(), np.bincount(labels.ravel(), minlength=5))
    # outside the box: the input exactly; the follow-up holds the crop only (no full-size array)
    outside = np.ones(case.geometry.shape, bool)
    outside[box.slices] = False
    assert outside.any() and fu.region == box.slices
    assert fu.phases["arterial"][outside].tobytes() == case.phases["arterial"][outside].tobytes()
    n_crop = int(np.prod(TINY_CROP))
    assert fu.nbytes() == 2 * 2 * 4 * n_crop + n_crop  # residual + SD (2 phases, float32) + labels on the crop
    # interval 0 is the input
    f0 = out["pd1_tki"][0]
    assert f0.phases["portal"].tobytes() == case.phases["portal"].tobytes() and not f0.std["portal"].any()
    assert np.array_equal(f0.labels, case.labels) and f0.labels is not case.labels


def test_generated_followups_hold_little_memory():
    """Nine full-grid HU + SD volumes per run were the 10 GB of the old benchmark: now the run keeps crops only."""
    case = phantom_case(shape=(64, 128, 128))
    gen = tiny_generator()
    _generate(case, gen, weeks=(8, 16, 24), samples=2)  # warm-up (imports, first allocations)
    gc.collect()
    tracemalloc.start()
    try:
        out = _generate(case, gen, weeks=(8, 16, 24), samples=2)
        gc.collect()
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    volume = case.phases["arterial"].nbytes
    assert sum(len(v) for v in out.values()) == 6
    assert held < 0.5 * volume, f"the follow-ups hold {held / volume:.2f} volumes"  # was 6 x 4 volumes
    assert peak < 6 * volume, f"generation peaked at {peak / volume:.2f} volumes"


def test_store_rounded_rounds_and_clips_into_integers():
    src = np.array([[[-40000.4, -1.5, -0.49]], [[0.5, 1.5, 2.51]], [[32767.6, 12.0, np.float32(7.4999)]]],
                   np.float32)
    out = np.empty(src.shape, np.int16)
    store_rounded(out, src)
    assert out.ravel().tolist() == [-32768, -2, 0, 0, 2, 3, 32767, 12, 7]
    f = np.empty(src.shape, np.float32)
    store_rounded(f, src)
    assert np.array_equal(f, src)


def test_response_reading_on_the_box_equals_the_full_grid_reading():
    from HCCTwinLib.survival.cohort import trajectory_readings

    case = phantom_case()
    result = TwinResult(case=case, regimens=list(REGIMENS), weeks=[8, 24])
    result.followups = _generate(case, weeks=(8, 24))
    read_responses(result)
    for r in REGIMENS:
        items = [(w, fu.labels, fu.phases["arterial"]) for w, fu in sorted(result.followups[r].items())]
        full = trajectory_readings(case.labels, case.geometry, items, case.phases["arterial"])
        assert result.readings[r] == full
    # a label outside the box: read on the full grid (nothing may be missed)
    case.labels[0, 0, 0] = 1
    result.readings.clear()
    read_responses(result)
    items = [(w, fu.labels, fu.phases["arterial"]) for w, fu in sorted(result.followups[REGIMENS[0]].items())]
    assert result.readings[REGIMENS[0]] == trajectory_readings(case.labels, case.geometry, items,
                                                               case.phases["arterial"])


def test_summary_volumes_from_counts_match_the_labels():
    case = phantom_case()
    result = TwinResult(case=case, regimens=list(REGIMENS), weeks=[8, 24])
    result.followups = _generate(case, weeks=(8, 24))
    from HCCTwinLib.pipeline import label_volumes_ml

    vox = case.geometry.voxel_volume_ml
    for r, by_week in result.summary()["virtual_followups"].items():
        for key, volumes in by_week.items():
            assert volumes == label_volumes_ml(result.followups[r][int(key[1:])].labels, vox)


# ------------------------------------------------------------------------------------------------------- scene
@pytest.fixture(scope="module")
def app(headless_app):
    from HCCTwinLib.scene import layout as L

    headless_app.slice_views(L.COMPARE_VIEWS, group=L.COMPARE_VIEW_GROUP)
    return headless_app


def test_scene_holds_int16_followups_shared_by_the_proxies_and_sd_on_the_crop_grid(app):
    import slicer

    from HCCTwinLib.scene import build as B
    from HCCTwinLib.scene import selftest
    from HCCTwinLib.scene.nodes import array_and_geometry_from_volume

    app.clear()
    case = phantom_case()
    result = TwinResult(case=case, regimens=list(REGIMENS), weeks=[8, 16])
    result.followups = _generate(case, weeks=(8, 16))
    ids = B.show_result(app.scene, result, segmentations_logic=app.segmentations_logic,
                        sequences_logic=app.sequences_logic)
    pre = app.scene.GetNodeByID(ids.pre["portal"])
    assert slicer.util.arrayFromVolume(pre).dtype == np.int16
    for regimen in REGIMENS:
        seq = app.scene.GetNodeByID(ids.virtual_sequences[regimen])
        browser = app.scene.GetNodeByID(ids.virtual_browsers[regimen])
        std_seq = app.scene.GetNodeByID(ids.uncertainty_sequences[regimen])
        for n, w in enumerate((8, 16)):
            browser.SetSelectedItemNumber(n)
            proxy = browser.GetProxyNode(seq)
            item = seq.GetNthDataNode(n)
            # the proxy shows the item's own voxels (no copy per browser)
            assert proxy.GetImageData().GetScalarPointer() == item.GetImageData().GetScalarPointer()
            array, geom = array_and_geometry_from_volume(proxy)
            expected = result.followups[regimen][w].phases["portal"]
            assert array.dtype == np.int16 and geom.same_grid(case.geometry)
            assert np.abs(array - expected).max() <= 0.5 + 1e-4
            sd, sd_geom = array_and_geometry_from_volume(browser.GetProxyNode(std_seq))
            assert sd.shape == TINY_CROP and sd_geom.same_grid(result.followups[regimen][w].context.box.crop)
    # the shared self-test checks hold for compact follow-ups too
    selftest.check_uncertainty(app.scene, result, ids)


# ------------------------------------------------------------------------------------------------ two cases
@pytest.fixture(scope="module")
def tiny_generator_file(tmp_path_factory):
    from HCCTwinLib.weights import save_model

    gen = tiny_generator()
    path, _ = save_model(gen.model, tmp_path_factory.mktemp("gen") / "tiny_twin.safetensors", gen.card)
    return path


def test_a_second_case_leaves_no_memory_behind(tiny_generator_file, app):
    """numpy/Python memory after case 2 = after case 1 (pipeline + scene + clearing the scene); the RSS of the
    whole pipeline at full size is measured by the benchmark."""
    from HCCTwinLib.scene import build as B

    options = PipelineOptions(segmentation="given", samples=2, seed=1, steps=1, device="cpu",
                              generator_weights=str(tiny_generator_file))

    def one_case():
        case = phantom_case(seed=3)
        result = run_case(case, REGIMENS, [8, 16], options=options)
        assert result.followups, result.notes
        app.clear()
        B.show_result(app.scene, result, segmentations_logic=app.segmentations_logic,
                      sequences_logic=app.sequences_logic)
        app.clear()
        del result, case
        gc.collect()

    one_case()  # warm: models, imports, caches
    tracemalloc.start()
    try:
        one_case()
        after_1 = tracemalloc.get_traced_memory()[0]
        one_case()
        after_2 = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    volume = 40 * 64 * 72 * 4
    assert after_2 - after_1 < 0.1 * volume, f"case 2 left {(after_2 - after_1) / 1e6:.2f} MB more than case 1"


# ------------------------------------------------------------------------------------------- GPU out of memory
def test_generator_gpu_out_of_memory_falls_back_to_cpu_with_a_note(tiny_generator_file, monkeypatch):
    """A CUDA out-of-memory error in the sampler: the step re-runs on the CPU, the result says so, and the output is
    the CPU run's (runs on CPU-only CI: the "GPU" is a monkeypatched model call that raises once)."""
    import HCCTwinLib.twin as twin
    from HCCTwinLib.twin.generator import load_generator

    reference = run_case(phantom_case(), REGIMENS, [8], options=PipelineOptions(
        segmentation="given", samples=2, seed=2, device="cpu", generator_weights=str(tiny_generator_file)))
    gen = load_generator(tiny_generator_file, "cpu")
    gen.device = torch.device("cuda")  # as if loaded on a GPU
    original = Generator._run
    calls = []

    def run(self, cond, weeks, regs, noise, steps, device, progress):
        calls.append(torch.device(device).type)
        if torch.device(device).type == "cuda":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(self, cond, weeks, regs, noise, steps, device, progress)

    monkeypatch.setattr(Generator, "_run", run)
    monkeypatch.setattr(twin, "get_generator", lambda *a, **k: gen)
    result = run_case(phantom_case(), REGIMENS, [8], options=PipelineOptions(segmentation="given", samples=2, seed=2))
    assert calls == ["cuda", "cpu"]
    notes = [n for n in result.notes if "ran out of memory" in n]
    assert len(notes) == 1 and notes[0].startswith("Generator:") and "CPU" in notes[0], result.notes
    for r in REGIMENS:
        assert np.array_equal(result.followups[r][8].phases["portal"], reference.followups[r][8].phases["portal"])
        assert np.array_equal(result.followups[r][8].labels, reference.followups[r][8].labels)


def test_segmentation_gpu_out_of_memory_falls_back_to_cpu_with_a_note(monkeypatch):
    import HCCTwinLib.segmentation as segmentation
    from HCCTwinLib.segmentation import inference
    from HCCTwinLib.segmentation.model import build_model, model_kwargs

    tiny = {"filters": [4, 8, 16], "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]]}
    card = {"name": "tiny_seg", "version": "0.0.1", "architecture": "DynUNet",
            "architecture_kwargs": model_kwargs("DynUNet", **tiny), "input_phases": ["arterial", "portal"],
            "spacing_mm": [1.5, 1.5, 3.0], "patch_size_kji": [16, 32, 32]}
    torch.manual_seed(0)
    seg = inference.Segmenter(build_model("DynUNet", **tiny), card, "cpu")
    case = phantom_case()
    case.labels = None
    expected = seg.segment(case)
    seg.device = torch.device("cuda")  # as if loaded on a GPU
    original = inference.sliding_window_logits  # stage 2 keeps the logits (labels and the guard's confidence)
    calls = []

    def windows(model, image, *, device, **kw):
        calls.append(torch.device(device).type)
        if torch.device(device).type == "cuda":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.50 GiB")
        return original(model, image, device=device, **kw)

    monkeypatch.setattr(inference, "sliding_window_logits", windows)
    monkeypatch.setattr(segmentation, "get_segmenter", lambda *a, **k: seg)
    result = run_case(case, REGIMENS, [8], options=PipelineOptions(segmentation="model",
                                                                   generator_weights="/nonexistent.safetensors"))
    assert calls[:2] == ["cuda", "cpu"]
    notes = [n for n in result.notes if "ran out of memory" in n]
    assert len(notes) == 1 and notes[0].startswith("Segmentation:") and "CPU" in notes[0], result.notes
    assert np.array_equal(result.case.labels, expected)
