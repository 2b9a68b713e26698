"""Tests of nst_det/losses/at.py against Zagoruyko & Komodakis's definition in float64."""
import pytest
import torch

from nst_det.losses import ATLoss, at_loss


def make_pair(shape=(2, 3, 5, 4, 6), dtype=torch.float64, seed=0):
    n, c_s, c_t, h, w = shape
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(n, c_s, h, w, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    teacher = torch.randn(n, c_t, h, w, generator=g, dtype=torch.float64).to(dtype)
    return student, teacher


def naive_at(student, teacher, p):
    """Mean over images and positions of (Q_s/||Q_s|| - Q_t/||Q_t||)^2, Q = mean_c |A_c|^p, by loops."""
    n, _, h, w = student.shape
    total = 0.0
    for i in range(n):
        maps = []
        for feats in (student[i], teacher[i]):
            q = [sum(abs(feats[c, y, x].item()) ** p for c in range(feats.shape[0])) / feats.shape[0]
                 for y in range(h) for x in range(w)]
            norm = sum(v * v for v in q) ** 0.5
            maps.append([v / norm for v in q])
        total += sum((a - b) ** 2 for a, b in zip(*maps))
    return total / (n * h * w)


@pytest.mark.parametrize("p", [2, 3, 1.5])
def test_value_matches_definition(p):
    student, teacher = make_pair()
    assert at_loss(student, teacher, p).item() == pytest.approx(naive_at(student, teacher, p), rel=1e-10)


@pytest.mark.parametrize("p", [2, 3])
def test_gradcheck_and_teacher_gets_no_gradient(p):
    student, teacher = make_pair((2, 3, 4, 3, 2), seed=1)
    assert torch.autograd.gradcheck(lambda s: at_loss(s, teacher, p), (student,))
    teacher.requires_grad_()
    at_loss(student, teacher, p).backward()
    assert teacher.grad is None and student.grad is not None


def test_half_input_uses_float32_and_identical_gives_zero():
    student, _ = make_pair(dtype=torch.bfloat16)
    loss = at_loss(student, student.detach().clone())
    assert loss.dtype == torch.float32 and abs(loss.item()) < 1e-7


def test_module_applies_weight():
    student, teacher = make_pair()
    torch.testing.assert_close(ATLoss(weight=500, p=2)(student, teacher), 500 * at_loss(student, teacher))


def test_spatial_mismatch_and_bad_p_raise_value_error():
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 4\).*\(2, 3, 8, 8\)"):
        at_loss(torch.randn(2, 3, 4, 4), torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match="p must be"):
        at_loss(torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), p=0)


def test_non_finite_student_is_named():
    student = torch.randn(2, 3, 4, 4)
    student[0, 1, 2, 2] = float("inf")
    with pytest.raises(ValueError, match="student .*NaN or inf"):
        at_loss(student, torch.randn(2, 5, 4, 4))
