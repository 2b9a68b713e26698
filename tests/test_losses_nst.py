"""Tests of nst_det/losses/nst.py: values and gradients against the paper's formula in float64."""
import os

import pytest
import torch
import torch.nn.functional as F

from nst_det.losses import NSTLoss, nst_loss
from nst_det.losses import nst as nst_module

KERNELS = {
    "linear": dict(kernel="linear"),
    "poly": dict(kernel="poly"),
    "poly_c1": dict(kernel="poly", coef=1.0),
    "poly_d3": dict(kernel="poly", degree=3, coef=0.5),
    "poly_d1": dict(kernel="poly", degree=1, coef=2.0),
    "gaussian_auto": dict(kernel="gaussian"),
    "gaussian_fixed": dict(kernel="gaussian", sigma2=0.7),
}
# (N, C_S, C_T, H, W): H*W large enough for the C x C Gram path, H*W small (spatial Gram path for
# the degree-2 polynomial), channels above 128 (blocked symmetric Gram), a single channel.
SHAPES = {
    "channel_gram": (2, 5, 7, 3, 4),
    "spatial_gram": (3, 9, 11, 2, 2),
    "wide": (1, 130, 129, 14, 14),
    "one_channel": (2, 1, 3, 4, 5),
}


def random_shape(seed):
    g = torch.Generator().manual_seed(seed)
    return tuple(int(v) for v in torch.randint(1, 9, (5,), generator=g))


for _seed in (11, 12):
    SHAPES[f"random{_seed}"] = random_shape(_seed)


def make_pair(shape, dtype=torch.float64, seed=0):
    n, c_s, c_t, h, w = shape
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(n, c_s, h, w, generator=g, dtype=torch.float64).to(dtype)
    teacher = torch.randn(n, c_t, h, w, generator=g, dtype=torch.float64).to(dtype)
    return student.requires_grad_(), teacher


def naive_mmd2(student, teacher, kernel, degree=2, coef=0.0, sigma2=None):
    """Paper formula in float64, every pair of maps enumerated by broadcasting, mean over the batch."""
    s = student.double().flatten(2)
    t = teacher.double().flatten(2)
    s = s / torch.sqrt((s * s).sum(-1, keepdim=True) + 1e-10)
    t = t / torch.sqrt((t * t).sum(-1, keepdim=True) + 1e-10)
    per_image = []
    for x, y in zip(t, s):  # x: teacher maps [C_T, HW], y: student maps [C_S, HW]
        if kernel == "gaussian":
            z = torch.cat([x, y]).detach()
            bandwidth = ((z[:, None, :] - z[None, :, :]) ** 2).sum(-1).mean() if sigma2 is None else sigma2

        def k(a, b):
            if kernel == "linear":
                return (a[:, None, :] * b[None, :, :]).sum(-1)
            if kernel == "poly":
                return ((a[:, None, :] * b[None, :, :]).sum(-1) + coef) ** degree
            return torch.exp(-((a[:, None, :] - b[None, :, :]) ** 2).sum(-1) / (2 * bandwidth))

        per_image.append(k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean())
    return torch.stack(per_image).mean()


def backward_nodes(loss):
    seen, stack = set(), [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and node not in seen:
            seen.add(node)
            stack.extend(fn for fn, _ in node.next_functions)
    return {type(node).__name__ for node in seen}


@pytest.mark.parametrize("shape_name", sorted(SHAPES))
@pytest.mark.parametrize("kernel_name", sorted(KERNELS))
def test_value_and_student_grad_match_naive_float64(kernel_name, shape_name):
    kwargs = KERNELS[kernel_name]
    student, teacher = make_pair(SHAPES[shape_name])
    loss = nst_loss(student, teacher, **kwargs)
    (grad,) = torch.autograd.grad(loss, student)
    ref_student = student.detach().clone().requires_grad_()
    ref = naive_mmd2(ref_student, teacher, **kwargs)
    (ref_grad,) = torch.autograd.grad(ref, ref_student)
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, ref, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("shape_name", ["channel_gram", "spatial_gram", "wide"])
@pytest.mark.parametrize("kernel_name", sorted(KERNELS))
def test_float32_matches_naive_float64(kernel_name, shape_name):
    kwargs = KERNELS[kernel_name]
    student, teacher = make_pair(SHAPES[shape_name], dtype=torch.float32)
    loss = nst_loss(student, teacher, **kwargs)
    loss.backward()
    ref_student = student.detach().double().requires_grad_()
    ref = naive_mmd2(ref_student, teacher.double(), **kwargs)
    ref.backward()
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), ref, rtol=2e-4, atol=1e-6)
    scale = ref_student.grad.abs().max().item()
    torch.testing.assert_close(student.grad.double(), ref_student.grad, rtol=1e-3, atol=1e-4 * scale)


# The Gram path forms the gradient in forward when C_S + C_T > H*W ("eager"), else in backward;
# the Gaussian kernel takes its own path (_GaussianMMD) when C_S + C_T > H*W.
GRADCHECK_CASES = {
    "linear": (dict(kernel="linear"), (2, 3, 4, 2, 3), "_MeanMapMMDBackward"),
    "poly_channel_backward": (dict(kernel="poly"), (2, 2, 3, 2, 3), "_ChannelGramMMDBackward"),
    "gaussian_channel_backward": (dict(kernel="gaussian", sigma2=0.4), (2, 2, 3, 2, 3), "_ChannelGramMMDBackward"),
    "poly_d1": (dict(kernel="poly", degree=1, coef=0.3), (1, 3, 4, 2, 3), "_MeanMapMMDBackward"),
    "poly_channel": (dict(kernel="poly"), (2, 3, 4, 2, 3), "_ChannelGramMMDBackward"),
    "poly_c_channel": (dict(kernel="poly", degree=3, coef=0.5), (1, 3, 4, 2, 3), "_ChannelGramMMDBackward"),
    "poly_spatial": (dict(kernel="poly", coef=0.5), (2, 5, 6, 2, 1), "BmmBackward0"),
    "gaussian_channel": (dict(kernel="gaussian", sigma2=0.4), (2, 3, 4, 2, 3), "_GaussianMMDBackward"),
    "gaussian_few_positions": (dict(kernel="gaussian", sigma2=1.3), (1, 5, 6, 2, 1), "_GaussianMMDBackward"),
}


@pytest.mark.parametrize("case", sorted(GRADCHECK_CASES))
def test_gradcheck_through_each_path(case):
    kwargs, shape, node = GRADCHECK_CASES[case]
    student, teacher = make_pair(shape, seed=3)
    assert node in backward_nodes(nst_loss(student, teacher, **kwargs))
    assert torch.autograd.gradcheck(lambda s: nst_loss(s, teacher, **kwargs), (student,))


@pytest.mark.parametrize("shape", [(5, 2, 3, 3, 4), (5, 6, 7, 2, 3)], ids=["backward", "eager"])
@pytest.mark.parametrize("kernel_name", ["poly_d3", "gaussian_auto"])
def test_images_in_chunks_give_the_same_value_and_grad(monkeypatch, kernel_name, shape):
    kwargs = KERNELS[kernel_name]
    student, teacher = make_pair(shape, seed=7)
    ref = naive_mmd2(student, teacher, **kwargs)
    (ref_grad,) = torch.autograd.grad(ref, student)
    c_s, c_t = shape[1], shape[2]
    monkeypatch.setattr(nst_module, "GRAM_CHUNK_ENTRIES", 2 * (c_s * c_s + c_s * c_t + c_t * c_t))
    loss = nst_loss(student, teacher, **kwargs)
    torch.testing.assert_close(loss, ref, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(torch.autograd.grad(loss, student)[0], ref_grad, rtol=1e-7, atol=1e-10)


# The Gaussian path (C_S + C_T > H*W) in row panels of GAUSSIAN_PANEL_ENTRIES entries (the teachers
# always in GAUSSIAN_TEACHER_PANELS or more, so the triangle of K_tt is taken in parts), the augmented
# maps built for the images that GAUSSIAN_MAP_ENTRIES allow: (panel, maps) entries as shipped (the
# whole batch at once); two images per panel, groups of two panels (the last group short); one image
# and a few rows per panel; one row per panel.
GAUSSIAN_BUDGETS = {
    "defaults": (nst_module.GAUSSIAN_PANEL_ENTRIES, nst_module.GAUSSIAN_MAP_ENTRIES),
    "images": (2 * 22 * 9, 4 * 22 * 9),
    "rows": (4 * 22, 1),
    "one_row": (1, 1),
}


@pytest.mark.parametrize("budget", sorted(GAUSSIAN_BUDGETS))
@pytest.mark.parametrize("sigma2", [None, 0.3], ids=["pooled", "fixed"])
def test_gaussian_path_matches_naive_float64(monkeypatch, sigma2, budget):
    monkeypatch.setattr(nst_module, "GAUSSIAN_PANEL_ENTRIES", GAUSSIAN_BUDGETS[budget][0])
    monkeypatch.setattr(nst_module, "GAUSSIAN_MAP_ENTRIES", GAUSSIAN_BUDGETS[budget][1])
    student, teacher = make_pair((5, 9, 13, 3, 2), seed=9)  # C_S != C_T, C_S + C_T > H*W, batch > 1
    loss = nst_loss(student, teacher, kernel="gaussian", sigma2=sigma2)
    assert "_GaussianMMDBackward" in backward_nodes(loss)
    (grad,) = torch.autograd.grad(loss, student)
    ref_student = student.detach().clone().requires_grad_()
    ref = naive_mmd2(ref_student, teacher, "gaussian", sigma2=sigma2)
    (ref_grad,) = torch.autograd.grad(ref, ref_student)
    torch.testing.assert_close(loss, ref, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-7, atol=1e-10)
    with torch.no_grad():
        torch.testing.assert_close(nst_loss(student, teacher, kernel="gaussian", sigma2=sigma2), ref,
                                   rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("sigma2", [None, 0.3], ids=["pooled", "fixed"])
def test_gaussian_path_weights_each_image_by_its_upstream_gradient(sigma2):
    student, teacher = make_pair((3, 7, 4, 2, 2), seed=4)
    weights = torch.tensor([0.5, -2.0, 3.0], dtype=torch.float64)
    mmd2 = nst_module._GaussianMMD.apply(student.flatten(2), teacher.flatten(2), sigma2, True)
    (grad,) = torch.autograd.grad((weights * mmd2).sum(), student)
    ref_student = student.detach().clone().requires_grad_()
    ref = [naive_mmd2(ref_student[i : i + 1], teacher[i : i + 1], "gaussian", sigma2=sigma2) for i in range(3)]
    (ref_grad,) = torch.autograd.grad((weights * torch.stack(ref)).sum(), ref_student)
    torch.testing.assert_close(mmd2, torch.stack(ref), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-7, atol=1e-10)


def test_auto_sigma2_is_the_detached_pooled_mean_squared_distance():
    student, teacher = make_pair((1, 4, 3, 2, 3), seed=5)
    s = F.normalize(student.detach().flatten(2)[0], dim=1, eps=0)
    t = F.normalize(teacher.flatten(2)[0], dim=1, eps=0)
    z = torch.cat([t, s])
    pooled = ((z[:, None] - z[None]) ** 2).sum(-1).mean().item()
    auto = nst_loss(student, teacher, kernel="gaussian")
    fixed = nst_loss(student, teacher, kernel="gaussian", sigma2=pooled)
    torch.testing.assert_close(auto, fixed)
    torch.testing.assert_close(torch.autograd.grad(auto, student)[0], torch.autograd.grad(fixed, student)[0])


@pytest.mark.parametrize("shape_name", ["channel_gram", "spatial_gram"])
@pytest.mark.parametrize("kernel_name", sorted(KERNELS))
def test_teacher_gets_no_gradient(kernel_name, shape_name):
    student, teacher = make_pair(SHAPES[shape_name])
    teacher.requires_grad_()
    nst_loss(student, teacher, **KERNELS[kernel_name]).backward()
    assert teacher.grad is None and student.grad is not None


@pytest.mark.parametrize("kernel_name", sorted(KERNELS))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_are_computed_in_float32(kernel_name, dtype):
    kwargs = KERNELS[kernel_name]
    student, teacher = make_pair(SHAPES["channel_gram"], dtype=dtype)
    loss = nst_loss(student, teacher, **kwargs)
    loss.backward()
    ref = naive_mmd2(student.detach(), teacher, **kwargs)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-7)
    assert student.grad.dtype == dtype and torch.isfinite(student.grad).all()


@pytest.mark.parametrize("zero", ["student", "teacher", "both"])
@pytest.mark.parametrize("shape_name", ["channel_gram", "spatial_gram"])
@pytest.mark.parametrize("kernel_name", sorted(KERNELS))
def test_all_zero_maps_give_finite_loss_and_grad(kernel_name, shape_name, zero):
    student, teacher = make_pair(SHAPES[shape_name], dtype=torch.float32)
    with torch.no_grad():
        if zero in ("student", "both"):
            student.zero_()
        if zero in ("teacher", "both"):
            teacher.zero_()
    loss = nst_loss(student, teacher, **KERNELS[kernel_name])
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()


@pytest.mark.parametrize("shape", [(2, 6, 6, 3, 4), (2, 9, 9, 2, 2)], ids=["channel_gram", "spatial_gram"])
@pytest.mark.parametrize("kernel_name", sorted(KERNELS))
def test_identical_student_and_teacher_give_zero(kernel_name, shape):
    student, _ = make_pair(shape, dtype=torch.float32)
    loss = nst_loss(student, student.detach().clone(), **KERNELS[kernel_name])
    assert abs(loss.item()) < 1e-5


def test_spatial_mismatch_names_both_shapes():
    student, teacher = torch.randn(2, 3, 4, 5), torch.randn(2, 6, 8, 10)
    with pytest.raises(ValueError) as err:
        nst_loss(student, teacher)
    assert "(2, 3, 4, 5)" in str(err.value) and "(2, 6, 8, 10)" in str(err.value)
    assert "resize" in str(err.value)


def test_resize_to_teacher_and_to_student():
    student, _ = make_pair((2, 3, 1, 4, 5), seed=1)
    teacher = torch.randn(2, 6, 8, 10, dtype=torch.float64)
    up = F.interpolate(student, size=(8, 10), mode="bilinear", align_corners=False)
    torch.testing.assert_close(nst_loss(student, teacher, resize="to_teacher"), nst_loss(up, teacher))
    down = F.interpolate(teacher, size=(4, 5), mode="bilinear", align_corners=False)
    loss = nst_loss(student, teacher, resize="to_student")
    torch.testing.assert_close(loss, nst_loss(student, down))
    loss.backward()
    assert student.grad.shape == student.shape


@pytest.mark.parametrize(
    "student_shape, teacher_shape, words",
    [
        ((2, 3, 4), (2, 3, 4, 5), ["4-D", "(2, 3, 4)"]),
        ((2, 3, 4, 5), (3, 3, 4, 5), ["batch", "(2, 3, 4, 5)", "(3, 3, 4, 5)"]),
        ((0, 3, 4, 5), (0, 3, 4, 5), ["empty"]),
    ],
)
def test_bad_shapes_raise_value_error_naming_them(student_shape, teacher_shape, words):
    with pytest.raises(ValueError) as err:
        nst_loss(torch.randn(student_shape), torch.randn(teacher_shape))
    assert all(w in str(err.value) for w in words)


@pytest.mark.parametrize("culprit", ["student", "teacher"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("kernel_name", ["linear", "poly", "gaussian_auto"])
def test_non_finite_input_is_named(kernel_name, bad, culprit):
    tensors = {"student": torch.randn(2, 3, 4, 5), "teacher": torch.randn(2, 4, 4, 5)}
    tensors[culprit][1, 2, 3, 4] = bad
    with pytest.raises(ValueError, match=f"{culprit} .*NaN or inf"):
        nst_loss(tensors["student"], tensors["teacher"], **KERNELS[kernel_name])


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(kernel="cosine"),
        dict(kernel="poly", degree=0),
        dict(kernel="poly", degree=2.5),
        dict(kernel="gaussian", sigma2=-1.0),
        dict(kernel="gaussian", sigma2=float("nan")),
        dict(resize="nearest"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs):
    with pytest.raises(ValueError, match="nst_loss"):
        nst_loss(torch.randn(1, 2, 3, 3), torch.randn(1, 2, 3, 3), **kwargs)
    with pytest.raises(ValueError, match="nst_loss"):
        NSTLoss(**kwargs)


@pytest.mark.parametrize("kernel_name", ["linear", "poly_d3", "gaussian_auto"])
def test_module_applies_weight(kernel_name):
    kwargs = KERNELS[kernel_name]
    student, teacher = make_pair((2, 3, 5, 3, 3))
    module = NSTLoss(weight=3.5, **kwargs)
    torch.testing.assert_close(module(student, teacher), 3.5 * nst_loss(student, teacher, **kwargs))


def _peak_extra_rss_bytes(fn):
    """Resident-set high-water mark while fn runs, above the resident set before it (Linux)."""

    def read_kb(key):
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith(key))

    before = read_kb("VmRSS:")
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    fn()
    return (read_kb("VmHWM:") - before) * 1024


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux peak-RSS reset")
@pytest.mark.parametrize("kernel", ["linear", "poly", "gaussian"])
def test_no_pairwise_tensor_is_materialised(kernel):
    # Broadcasting the pairs would need 256 * 256 * 4096 * 4 B = 1 GiB per term; the input is 4 MiB.
    student = torch.randn(1, 256, 64, 64, requires_grad=True)
    teacher = torch.randn(1, 256, 64, 64)
    nst_loss(student, teacher, kernel=kernel).backward()
    student.grad = None
    peak = _peak_extra_rss_bytes(lambda: nst_loss(student, teacher, kernel=kernel).backward())
    assert peak < 64 * 2**20
