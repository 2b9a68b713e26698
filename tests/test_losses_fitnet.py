"""Tests of nst_det/losses/fitnet.py: hint loss formula, regressor, learning."""
import pytest
import torch

from nst_det.losses import FitNetLoss, fitnet_loss


def make_pair(n=2, c_s=3, c_t=5, h=4, w=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c_s, h, w, generator=g), torch.randn(n, c_t, h, w, generator=g)


def test_functional_is_mean_squared_error():
    a, b = make_pair(c_s=5, c_t=5)
    a, b = a.double().requires_grad_(), b.double()
    expected = sum((x - y) ** 2 for x, y in zip(a.flatten().tolist(), b.flatten().tolist())) / a.numel()
    assert fitnet_loss(a, b).item() == pytest.approx(expected, rel=1e-12)
    assert torch.autograd.gradcheck(lambda s: fitnet_loss(s, b), (a,))


def test_module_regresses_student_with_a_1x1_conv():
    student, teacher = make_pair()
    student.requires_grad_()
    teacher.requires_grad_()
    module = FitNetLoss(3, 5, weight=2.0)
    conv = module.regressor[0]
    regressed = torch.einsum("oc,nchw->nohw", conv.weight[:, :, 0, 0], student) + conv.bias[None, :, None, None]
    loss = module(student, teacher)
    torch.testing.assert_close(loss, 2.0 * ((regressed - teacher) ** 2).mean())
    loss.backward()
    assert teacher.grad is None and student.grad is not None and conv.weight.grad is not None


@pytest.mark.parametrize("use_bn", [False, True])
def test_regressor_learns(use_bn):
    torch.manual_seed(0)
    student, _ = make_pair(n=4)
    mixing = torch.randn(5, 3)
    teacher = torch.einsum("oc,nchw->nohw", mixing, student)
    module = FitNetLoss(3, 5, use_bn=use_bn)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    losses = []
    for _ in range(20):
        loss = module(student, teacher)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_mismatches_raise_value_error_naming_shapes():
    student, teacher = make_pair()
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 6\).*\(2, 5, 8, 12\)"):
        FitNetLoss(3, 5)(student, torch.randn(2, 5, 8, 12))
    with pytest.raises(ValueError, match=r"\[N, 4, H, W\].*\(2, 3, 4, 6\)"):
        FitNetLoss(4, 5)(student, teacher)
    with pytest.raises(ValueError, match="channels"):
        fitnet_loss(student, teacher)


def test_non_finite_teacher_is_named():
    student, teacher = make_pair(c_t=3)
    teacher[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="teacher .*NaN or inf"):
        fitnet_loss(student, teacher)
