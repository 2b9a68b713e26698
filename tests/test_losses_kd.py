"""Tests of nst_det/losses/kd.py against Hinton et al.'s formula in float64."""
import math

import pytest
import torch

from nst_det.losses import KDLoss, binary_kd_loss, kd_loss


def make_logits(n=4, k=7, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    student = (3 * torch.randn(n, k, generator=g, dtype=torch.float64)).to(dtype).requires_grad_()
    teacher = (3 * torch.randn(n, k, generator=g, dtype=torch.float64)).to(dtype)
    return student, teacher


def naive_kd(student, teacher, temperature):
    """T^2 * 1/N sum_n sum_k p_t log(p_t / p_s), softmax written out, in float64."""
    total = 0.0
    for z_s, z_t in zip(student.double().tolist(), teacher.double().tolist()):
        e_s = [math.exp(v / temperature) for v in z_s]
        e_t = [math.exp(v / temperature) for v in z_t]
        p_s = [v / sum(e_s) for v in e_s]
        p_t = [v / sum(e_t) for v in e_t]
        total += sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s))
    return temperature**2 * total / len(student)


@pytest.mark.parametrize("temperature", [1.0, 4.0, 0.5])
def test_value_matches_formula(temperature):
    student, teacher = make_logits()
    expected = naive_kd(student, teacher, temperature)
    assert kd_loss(student, teacher, temperature).item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_student_grad_is_t_times_prob_difference_over_n(temperature):
    student, teacher = make_logits()
    teacher.requires_grad_()
    kd_loss(student, teacher, temperature).backward()
    p_s = torch.softmax(student.detach() / temperature, 1)
    p_t = torch.softmax(teacher.detach() / temperature, 1)
    torch.testing.assert_close(student.grad, temperature * (p_s - p_t) / len(student))
    assert teacher.grad is None


def test_gradcheck():
    student, teacher = make_logits(n=3, k=5)
    assert torch.autograd.gradcheck(lambda s: kd_loss(s, teacher, 2.0), (student,))


def test_identical_logits_give_zero_and_half_inputs_use_float32():
    student, _ = make_logits(dtype=torch.float16)
    loss = kd_loss(student, student.detach().clone())
    assert loss.dtype == torch.float32 and abs(loss.item()) < 1e-6


def test_module_applies_weight():
    student, teacher = make_logits()
    torch.testing.assert_close(KDLoss(weight=16, temperature=4)(student, teacher), 16 * kd_loss(student, teacher, 4))


@pytest.mark.parametrize(
    "student_shape, teacher_shape, kwargs, words",
    [
        ((4, 7), (4, 8), {}, ["(4, 7)", "(4, 8)"]),
        ((4, 7, 1), (4, 7, 1), {}, ["[N, K]", "(4, 7, 1)"]),
        ((4, 7), (4, 7), dict(temperature=0.0), ["temperature"]),
    ],
)
def test_bad_input_raises_value_error(student_shape, teacher_shape, kwargs, words):
    with pytest.raises(ValueError) as err:
        kd_loss(torch.randn(student_shape), torch.randn(teacher_shape), **kwargs)
    assert all(w in str(err.value) for w in words)


def test_non_finite_logits_are_named():
    student, teacher = torch.randn(4, 7), torch.randn(4, 7)
    teacher[2, 3] = float("nan")
    with pytest.raises(ValueError, match="teacher_logits .*NaN or inf"):
        kd_loss(student, teacher)


def naive_binary_kd(student, teacher, temperature):
    """T^2 * 1/N sum_n sum_k KL(Bernoulli(q_t) || Bernoulli(q_s)), q = sigmoid(z / T), in float64."""
    total = 0.0
    for z_s, z_t in zip(student.double().tolist(), teacher.double().tolist()):
        for a, b in zip(z_s, z_t):
            q_s, q_t = 1 / (1 + math.exp(-a / temperature)), 1 / (1 + math.exp(-b / temperature))
            total += q_t * math.log(q_t / q_s) + (1 - q_t) * math.log((1 - q_t) / (1 - q_s))
    return temperature**2 * total / len(student)


@pytest.mark.parametrize("temperature", [1.0, 4.0, 0.5])
def test_binary_kd_value_matches_bernoulli_kl(temperature):
    student, teacher = make_logits()
    expected = naive_binary_kd(student, teacher, temperature)
    assert binary_kd_loss(student, teacher, temperature).item() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_binary_kd_student_grad_is_t_times_sigmoid_difference_over_n(temperature):
    student, teacher = make_logits()
    teacher.requires_grad_()
    binary_kd_loss(student, teacher, temperature).backward()
    q_s, q_t = torch.sigmoid(student.detach() / temperature), torch.sigmoid(teacher.detach() / temperature)
    torch.testing.assert_close(student.grad, temperature * (q_s - q_t) / len(student))
    assert teacher.grad is None


def test_binary_kd_gradcheck_and_zero_for_equal_logits():
    student, teacher = make_logits(n=3, k=5)
    assert torch.autograd.gradcheck(lambda s: binary_kd_loss(s, teacher, 2.0), (student,))
    assert abs(binary_kd_loss(student, student.detach().clone()).item()) < 1e-12


def test_binary_kd_bad_input_is_named():
    student, teacher = make_logits()
    with pytest.raises(ValueError, match="binary_kd_loss"):
        binary_kd_loss(student, teacher[:, :3])
