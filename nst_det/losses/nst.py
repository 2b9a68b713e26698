"""Neuron Selectivity Transfer (Huang & Wang, "Like What You Like", arXiv 1707.01219): the squared
MMD between the L2-normalised channel maps of a student and a teacher feature map.

Exact, and never through an N x C x C x HW tensor: the pairwise kernel values come from C x C Gram
matrices (or, for the degree-2 polynomial kernel when H*W is small, from H*W x H*W ones), and the
Gram path has a hand-written backward of two batched matmuls with the L2-normalisation folded in.
The Gaussian kernel with more channels than positions (C_S + C_T > H*W, classification scale) has
its own path, which makes each exponent in one matmul and never holds a whole C x C matrix.
"""
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from nst_det.losses.feature_pair import check_feature_pair, check_loss_finite

__all__ = ["KERNELS", "RESIZE_MODES", "NORM_EPS", "normalise_maps", "nst_loss", "NSTLoss"]

KERNELS = ("linear", "poly", "gaussian")
# resize=None: spatial sizes must match; "to_teacher": the student map is resized (bilinear) to the
# teacher's H x W; "to_student": the teacher map is resized to the student's H x W.
RESIZE_MODES = (None, "to_teacher", "to_student")
# Spatial L2 normalisation f / sqrt(||f||^2 + eps), as the official L2Normalization(mode='spatial',
# eps=1e-10); an all-zero map normalises to zero with finite gradients.
NORM_EPS = 1e-10


def _inv_norm(sq_norms):
    """[N, C] squared spatial norms -> [N, C] factors 1 / sqrt(||f||^2 + NORM_EPS)."""
    return (sq_norms + NORM_EPS).rsqrt()


def _sq_norms(maps):
    """[N, C, HW] maps -> [N, C] squared L2 norms over the HW positions (no HW-sized temporary)."""
    return torch.linalg.vector_norm(maps, dim=-1).square()


def normalise_maps(maps):
    """[N, C, H, W] (or [N, C, HW]) -> [N, C, HW]: each channel's map divided by
    sqrt(||f||^2 + NORM_EPS), its spatial L2 norm (the samples NST compares)."""
    flat = maps.flatten(2)
    return flat * _inv_norm(_sq_norms(flat))[:, :, None]


def _self_gram(x):
    """[N, C, HW] -> [N, C, C] x x^T; when the products dominate (C >= 128, HW >= C), the
    symmetric result is taken as three half-size blocks (3/4 of the multiply-adds of one bmm)."""
    h = x.shape[1] // 2
    if h < 64 or x.shape[2] < x.shape[1]:
        return torch.bmm(x, x.transpose(1, 2))
    top, bottom = x[:, :h], x[:, h:]
    gram = x.new_empty(x.shape[0], x.shape[1], x.shape[1])
    gram[:, :h, :h] = torch.bmm(top, top.transpose(1, 2))
    gram[:, h:, h:] = torch.bmm(bottom, bottom.transpose(1, 2))
    off_diagonal = torch.bmm(top, bottom.transpose(1, 2))
    gram[:, :h, h:] = off_diagonal
    gram[:, h:, :h] = off_diagonal.transpose(1, 2)
    return gram


def _sq_dist(gram, sq_rows, sq_cols):
    """[n, A, B] Gram, [n, A], [n, B] squared norms -> [n, A, B] ||x - y||^2 = -2 G + sq_rows 1^T
    + 1 sq_cols^T (one baddbmm), clamped at 0."""
    rows = torch.stack([sq_rows, torch.ones_like(sq_rows)], dim=2)
    cols = torch.stack([torch.ones_like(sq_cols), sq_cols], dim=1)
    return torch.baddbmm(gram, rows, cols, beta=-2).clamp_min_(0)


def _pooled_sigma2(d_tt, d_ss, d_st):
    """[n] mean of ||z - z'||^2 over all ordered pairs of the pooled maps {t_i} U {s_j}."""
    c_t, c_s = d_tt.shape[-1], d_ss.shape[-1]
    total = d_tt.sum((-2, -1)) + d_ss.sum((-2, -1)) + 2 * d_st.sum((-2, -1))
    return (total / (c_t + c_s) ** 2).clamp_min(torch.finfo(total.dtype).eps)


def _row_dot(x, y):
    """[n, A, B], [n, A, B] -> [n, A] sum_b x_ab y_ab, without an [n, A, B] temporary."""
    return torch.einsum("nab,nab->na", x, y)


def _poly_mean(gram, degree, coef):
    """[n, A, B] Gram -> [n] mean of (G + coef)^degree."""
    shifted = gram if coef == 0 else gram + coef
    if degree == 2:
        return torch.linalg.vector_norm(shifted, dim=(-2, -1)).square() / (gram.shape[1] * gram.shape[2])
    return shifted.pow(degree).mean((-2, -1))


def _poly_derivative(gram, degree, coef, factor):
    """[n, A, B] Gram -> factor * degree * (G + coef)^(degree - 1)."""
    shifted = gram if coef == 0 else gram + coef
    if degree == 2:
        return shifted * (2 * factor)
    return shifted.pow(degree - 1).mul_(degree * factor)


def _kernel_mmd2(g_tt, g_ss, g_st, kernel, degree, coef, sigma2, need_grad):
    """Grams of the normalised maps [n, C_T, C_T], [n, C_S, C_S], [n, C_S, C_T] -> ([n] MMD^2,
    P = dMMD^2/dG_ss, Q = dMMD^2/dG_st), P and Q None unless need_grad; P is symmetric."""
    c_s, c_t = g_st.shape[1], g_st.shape[2]
    if kernel == "poly":
        mmd2 = _poly_mean(g_tt, degree, coef) + _poly_mean(g_ss, degree, coef) - 2 * _poly_mean(g_st, degree, coef)
        if not need_grad:
            return mmd2, None, None
        p = _poly_derivative(g_ss, degree, coef, 1 / c_s**2)
        return mmd2, p, _poly_derivative(g_st, degree, coef, -2 / (c_s * c_t))
    # Gaussian: D = ||x||^2 + ||y||^2 - 2 x^T y, with ||x||^2 on the Gram diagonals.
    sq_t, sq_s = g_tt.diagonal(dim1=1, dim2=2), g_ss.diagonal(dim1=1, dim2=2)
    d_tt, d_ss, d_st = _sq_dist(g_tt, sq_t, sq_t), _sq_dist(g_ss, sq_s, sq_s), _sq_dist(g_st, sq_s, sq_t)
    bandwidth = _pooled_sigma2(d_tt, d_ss, d_st) if sigma2 is None else torch.full_like(sq_t[:, 0], sigma2)
    scale = (-0.5 / bandwidth)[:, None, None]
    k_tt, k_ss, k_st = (d.mul_(scale).exp_() for d in (d_tt, d_ss, d_st))
    rows_ss, rows_st = k_ss.sum(-1), k_st.sum(-1)
    mmd2 = k_tt.mean((-2, -1)) + rows_ss.sum(-1) / c_s**2 - 2 * rows_st.sum(-1) / (c_s * c_t)
    if not need_grad:
        return mmd2, None, None
    # dMMD^2/dD_ss = kappa_ss K_ss, dMMD^2/dD_st = kappa_st K_st; chain through D (diagonals included).
    kappa_ss, kappa_st = scale / c_s**2, -2 * scale / (c_s * c_t)
    p = k_ss.mul_(-2 * kappa_ss)
    p.diagonal(dim1=1, dim2=2).add_(2 * kappa_ss[:, :, 0] * rows_ss + kappa_st[:, :, 0] * rows_st)
    return mmd2, p, k_st.mul_(-2 * kappa_st)


def _normalised_grams(student, teacher):
    """[n, C_S, HW], [n, C_T, HW] raw maps -> Grams of the normalised maps G_tt, G_ss, G_st and the
    factors 1/n_s [n, C_S], 1/n_t [n, C_T] (the norms come from the raw Grams' diagonals)."""
    g_ss = _self_gram(student)
    g_st = torch.bmm(student, teacher.transpose(1, 2))
    g_tt = _self_gram(teacher)
    inv_s = _inv_norm(g_ss.diagonal(dim1=1, dim2=2))
    inv_t = _inv_norm(g_tt.diagonal(dim1=1, dim2=2))
    g_ss.mul_(inv_s[:, :, None] * inv_s[:, None, :])
    g_st.mul_(inv_s[:, :, None] * inv_t[:, None, :])
    g_tt.mul_(inv_t[:, :, None] * inv_t[:, None, :])
    return g_tt, g_ss, g_st, inv_s, inv_t


# Images per chunk of the Gram path: at most this many Gram entries (C_S^2 + C_S C_T + C_T^2 per
# image) are alive at once, which bounds the C x C temporaries when C is large.
GRAM_CHUNK_ENTRIES = 2**22


class _ChannelGramMMD(torch.autograd.Function):
    """[N, C_S, HW] raw student, [N, C_T, HW] raw teacher -> [N] MMD^2 of their normalised maps.

    Forward: three bmm's give the raw Grams, whose diagonals give the spatial norms, so the
    normalised maps S = D F (D = diag(1/n)) and T are never materialised. Gradient: with
    P = dMMD^2/dG_ss (symmetric) and Q = dMMD^2/dG_st in closed form, dMMD^2/dS = 2 P S + Q T;
    through S = F / n, dMMD^2/dF = D (2P - diag(r)) D F + D Q D_t F_t with
    r = rowsum(2P * G_ss + Q * G_st) (r_j = s_j . dMMD^2/ds_j): two
    bmm's with C x C factors, no HW-sized temporaries. The factors are kept for backward unless
    they are larger than the gradient (C_S + C_T > HW); then the gradient is formed in forward.
    """

    @staticmethod
    def forward(ctx, student, teacher, kernel, degree, coef, sigma2, need_grad):
        n, c_s, hw = student.shape
        c_t = teacher.shape[1]
        ctx.eager = need_grad and _pairs_outnumber_positions(c_s, c_t, hw)
        mmd2, factors = [], []
        unit_grad = torch.empty_like(student) if ctx.eager else None
        step = max(1, GRAM_CHUNK_ENTRIES // (c_s * c_s + c_s * c_t + c_t * c_t))
        for i in range(0, n, step):
            chunk = slice(i, i + step)
            g_tt, g_ss, g_st, inv_s, inv_t = _normalised_grams(student[chunk], teacher[chunk])
            chunk_mmd2, p, q = _kernel_mmd2(g_tt, g_ss, g_st, kernel, degree, coef, sigma2, need_grad)
            mmd2.append(chunk_mmd2)
            if not need_grad:
                continue
            r = 2 * _row_dot(p, g_ss) + _row_dot(q, g_st)
            a = p.mul_(inv_s[:, :, None] * (2 * inv_s)[:, None, :])
            a.diagonal(dim1=1, dim2=2).sub_(r * inv_s.square())
            b = q.mul_(inv_s[:, :, None] * inv_t[:, None, :])
            if ctx.eager:
                torch.bmm(a, student[chunk], out=unit_grad[chunk])
                unit_grad[chunk].baddbmm_(b, teacher[chunk])
            else:
                factors.append((a, b))
        if ctx.eager:
            ctx.save_for_backward(unit_grad)
        elif need_grad:
            a, b = (torch.cat(parts) for parts in zip(*factors)) if len(factors) > 1 else factors[0]
            ctx.save_for_backward(student, teacher, a, b)
        return torch.cat(mmd2)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_mmd2):
        w = grad_mmd2[:, None, None]
        if ctx.eager:
            (unit_grad,) = ctx.saved_tensors
            return unit_grad * w, None, None, None, None, None, None
        student, teacher, a, b = ctx.saved_tensors
        grad = torch.bmm(a * w, student)
        grad.baddbmm_(b * w, teacher)
        return grad, None, None, None, None, None, None


class _MeanMapMMD(torch.autograd.Function):
    """[N, C_S, HW], [N, C_T, HW] raw maps -> [N] linear-kernel MMD^2 = ||mean_j s_j - mean_i t_i||^2.

    Backward: every s_j gets v = 2 (mu_S - mu_T) / C_S, and through s = f / n,
    dL/df = v / n - f (f . v) / n^3: one matvec and two passes over the student map.
    """

    @staticmethod
    def forward(ctx, student, teacher):
        inv_s = _inv_norm(_sq_norms(student))
        inv_t = _inv_norm(_sq_norms(teacher))
        mu_s = torch.bmm((inv_s / student.shape[1]).unsqueeze(1), student)
        mu_t = torch.bmm((inv_t / teacher.shape[1]).unsqueeze(1), teacher)
        diff = mu_s - mu_t
        ctx.save_for_backward(student, inv_s, diff)
        return diff.square().sum((-2, -1))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_mmd2):
        student, inv_s, diff = ctx.saved_tensors
        v = diff * (2 * grad_mmd2 / student.shape[1])[:, None, None]
        f_dot_v = torch.bmm(student, v.transpose(1, 2))
        grad = student * (-f_dot_v * inv_s[:, :, None].pow(3))
        grad.addcmul_(v, inv_s[:, :, None])
        return grad, None


def _spatial_gram_poly2_mmd2(student, teacher, coef):
    """[N, C_S, HW], [N, C_T, HW] raw maps -> [N] MMD^2 of k(x, y) = (x^T y + c)^2 from HW x HW Grams:
    ||S^T S / C_S - T^T T / C_T||_F^2 + 2c ||mu_S - mu_T||^2 (exact; cheap when HW << C)."""
    s, t = normalise_maps(student), normalise_maps(teacher)
    h = torch.bmm(s.transpose(1, 2), s) / s.shape[1] - torch.bmm(t.transpose(1, 2), t) / t.shape[1]
    mmd2 = h.square().sum((-2, -1))
    if coef != 0:
        mmd2 = mmd2 + 2 * coef * (s.mean(1) - t.mean(1)).square().sum(-1)
    return mmd2


# Entries of one row panel of the Gaussian path's exponents (16 MiB in float32; images are batched
# into a panel while they fit). At classification scale on a 2-core CPU, panels of 2**22 entries
# took 1.1-1.2x the floor of tools/benchmark_losses.py, of 2**24 1.5x (each pass of the kernel
# over a panel then leaves the cache), of 2**18 1.4x and of 2**16 2.2x (too many small matmuls).
# The augmented maps are built for as many whole panels of images at once as
# GAUSSIAN_MAP_ENTRIES allow (at least one).
GAUSSIAN_PANEL_ENTRIES = 2**22
GAUSSIAN_MAP_ENTRIES = 2**22
# At least this many teacher panels: the triangle of K_tt then skips (panels - 1) / (2 panels) of it.
GAUSSIAN_TEACHER_PANELS = 4


def _pairs_outnumber_positions(c_s, c_t, hw):
    """Whether the C_S + C_T maps outnumber their H*W positions: then C x C factors are larger than
    the maps, the Gram path forms the gradient in forward, and the Gaussian kernel takes its own path."""
    return c_s + c_t > hw


def _augmented_maps(student, teacher, sigma2):
    """[n, C_S, HW], [n, C_T, HW] raw maps -> (W, U, gamma, inv_s): W = [z, 1, -gamma |z|^2, e] and
    U = [2 gamma z, -gamma |z|^2, 1, 0], both [n, C_S + C_T, HW + 3], over the normalised maps z
    (students first; e is 1 for a student map, 0 for a teacher map), so that U_j . W_k =
    -gamma ||z_j - z_k||^2 with gamma = 1 / (2 sigma2); inv_s [n, C_S] = 1 / n_s."""
    n, c_s, hw = student.shape
    m = c_s + teacher.shape[1]
    inv_s = _inv_norm(_sq_norms(student))
    w = student.new_empty(n, m, hw + 3)
    maps = w[..., :hw]
    torch.mul(student, inv_s[:, :, None], out=maps[:, :c_s])
    torch.mul(teacher, _inv_norm(_sq_norms(teacher))[:, :, None], out=maps[:, c_s:])
    sq = _sq_norms(maps)
    if sigma2 is None:
        # mean of ||z - z'||^2 over the M^2 ordered pairs: 2 M sum ||z||^2 - 2 ||sum z||^2, over M^2.
        total = 2 * m * sq.sum(1) - 2 * maps.sum(1).square().sum(1)
        bandwidth = (total / m**2).clamp_min(torch.finfo(total.dtype).eps)
    else:
        bandwidth = torch.full_like(sq[:, 0], sigma2)
    gamma = 0.5 / bandwidth
    w[..., hw] = 1
    torch.mul(sq, -gamma[:, None], out=w[..., hw + 1])
    w[:, :c_s, hw + 2] = 1
    w[:, c_s:, hw + 2] = 0
    u = torch.empty_like(w)
    torch.mul(maps, 2 * gamma[:, None, None], out=u[..., :hw])
    u[..., hw] = w[..., hw + 1]
    u[..., hw + 1] = 1
    u[..., hw + 2] = 0
    return w, u, gamma, inv_s


def _kernel_panel_(exponents):
    """Exponents -gamma ||x - y||^2 -> kernel values exp(min(., 0)), in place (K <= 1, as D >= 0)."""
    return exponents.clamp_max_(0).exp_()


def _even_rows(total, most):
    """Rows per panel: `total` rows in as few panels of at most `most` (at least 1) rows as can be,
    of even sizes."""
    panels = -(-total // max(1, most))
    return -(-total // panels)


def _panel(buffer, rows, columns):
    """The first entries of a flat buffer as a contiguous [n, R, columns] panel for rows [n, R, *]."""
    n, r = rows.shape[:2]
    return buffer[: n * r * columns].view(n, r, columns)


class _GaussianMMD(torch.autograd.Function):
    """[N, C_S, HW] raw student, [N, C_T, HW] raw teacher -> [N] Gaussian MMD^2 of their normalised
    maps, for C_S + C_T > HW.

    With the augmented maps of _augmented_maps, a row panel of students gives its exponents against
    all C_S + C_T maps in one matmul (the distances' norms ride along as two extra columns), the
    kernel in place (exp), and in one more matmul with W itself Y = K_ss W_s - (C_S / C_T) K_st W_t:
    its map columns are K_ss s + r K_st t (r = -C_S / C_T) and its extra columns the row sums
    rows_ss + r rows_st and rows_ss. The teacher-teacher term needs no gradient and K_tt is
    symmetric: row panels of teachers take only the columns from their own diagonal block on, the
    block once and the rest twice. Gradient (sigma2 fixed, or detached when pooled): with
    alpha = 4 gamma / C_S^2, dMMD^2/ds_j = alpha (Y_j - (rows_ss + r rows_st)_j s_j) =: g_j, and
    through s = f / n, dMMD^2/df_j = (g_j - s_j (s_j . g_j)) / n_j, formed in forward.
    """

    @staticmethod
    def forward(ctx, student, teacher, sigma2, need_grad):
        n, c_s, hw = student.shape
        c_t = teacher.shape[1]
        m = c_s + c_t
        rows_s = _even_rows(c_s, GAUSSIAN_PANEL_ENTRIES // m)
        step = max(1, min(n, GAUSSIAN_PANEL_ENTRIES // (rows_s * m)))
        most_t = min(GAUSSIAN_PANEL_ENTRIES // (step * c_t), -(-c_t // GAUSSIAN_TEACHER_PANELS))
        rows_t = _even_rows(c_t, most_t)
        group = step * max(1, GAUSSIAN_MAP_ENTRIES // (m * (hw + 3) * step))
        panel = student.new_empty(step * max(rows_s * m, rows_t * c_t))
        mmd2 = student.new_empty(n)
        unit_grad = torch.empty_like(student) if need_grad else None
        for i in range(0, n, group):
            images = slice(i, i + group)
            w, u, gamma, inv_s = _augmented_maps(student[images], teacher[images], sigma2)
            # per image and panel: the sums over a student panel's K_ss and K_st columns (without
            # gradient), over a teacher panel's diagonal block and over the rest of its columns
            sums_s = w.new_empty(w.shape[0], -(-c_s // rows_s), 2)
            sums_t = w.new_empty(w.shape[0], -(-c_t // rows_t), 2)
            y = w.new_empty(w.shape[0], c_s, hw + 3) if need_grad else None
            for c in range(0, w.shape[0], step):
                chunk = slice(c, c + step)
                for p, j in enumerate(range(0, c_s, rows_s)):
                    rows = slice(j, min(j + rows_s, c_s))
                    k = _kernel_panel_(torch.bmm(u[chunk, rows], w[chunk].transpose(1, 2),
                                                 out=_panel(panel, u[chunk, rows], m)))
                    if need_grad:
                        torch.bmm(k[..., :c_s], w[chunk, :c_s], out=y[chunk, rows])
                        y[chunk, rows].baddbmm_(k[..., c_s:], w[chunk, c_s:], alpha=-c_s / c_t)
                    else:
                        torch.sum(k[..., :c_s], (1, 2), out=sums_s[chunk, p, 0])
                        torch.sum(k[..., c_s:], (1, 2), out=sums_s[chunk, p, 1])
                for p, j in enumerate(range(0, c_t, rows_t)):
                    rows = slice(c_s + j, c_s + j + rows_t)
                    k = _kernel_panel_(torch.bmm(u[chunk, rows], w[chunk, c_s + j :].transpose(1, 2),
                                                 out=_panel(panel, u[chunk, rows], c_t - j)))
                    torch.sum(k[..., : k.shape[1]], (1, 2), out=sums_t[chunk, p, 0])
                    torch.sum(k[..., k.shape[1] :], (1, 2), out=sums_t[chunk, p, 1])
            if need_grad:
                # rows_ss + 2 r rows_st = 2 (rows_ss + r rows_st) - rows_ss
                sum_ss_st = 2 * y[..., hw].sum(1) - y[..., hw + 2].sum(1)
            else:
                sum_ss_st = sums_s[..., 0].sum(1) - (2 * c_s / c_t) * sums_s[..., 1].sum(1)
            sum_tt = sums_t[..., 0].sum(1) + 2 * sums_t[..., 1].sum(1)
            mmd2[images] = sum_tt / c_t**2 + sum_ss_st / c_s**2
            if not need_grad:
                continue
            s = w[:, :c_s, :hw]
            g = unit_grad[images]
            torch.addcmul(y[..., :hw], s, y[..., hw, None], value=-1, out=g)
            g.addcmul_(s, _row_dot(s, g)[:, :, None], value=-1)
            g.mul_((4 * gamma / c_s**2)[:, None, None] * inv_s[:, :, None])
        if need_grad:
            ctx.save_for_backward(unit_grad)
        return mmd2

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_mmd2):
        (unit_grad,) = ctx.saved_tensors
        return unit_grad * grad_mmd2[:, None, None], None, None, None


def _channel_gram_is_cheaper(c_s, c_t, hw):
    """Whether C x C Grams cost no more than HW x HW ones for the degree-2 polynomial kernel."""
    return hw * (c_s + c_t) >= c_s * c_s + c_s * c_t + c_t * c_t


def check_kernel_args(kernel, degree, coef, sigma2, resize):
    """Raise ValueError for an unknown kernel or resize mode, a non-positive-integer degree, or a
    non-positive sigma2."""
    if kernel not in KERNELS:
        raise ValueError(f"nst_loss: kernel must be one of {KERNELS}, got {kernel!r}")
    if resize not in RESIZE_MODES:
        raise ValueError(f"nst_loss: resize must be one of {RESIZE_MODES}, got {resize!r}")
    if kernel == "poly" and (isinstance(degree, bool) or not isinstance(degree, int) or degree < 1):
        raise ValueError(f"nst_loss: poly kernel degree must be a positive integer, got {degree!r}")
    if kernel == "poly" and not isinstance(coef, (int, float)):
        raise ValueError(f"nst_loss: poly kernel coef must be a number, got {coef!r}")
    if kernel == "gaussian" and sigma2 is not None:
        if isinstance(sigma2, bool) or not isinstance(sigma2, (int, float)) or not 0 < sigma2 < float("inf"):
            raise ValueError(f"nst_loss: gaussian sigma2 must be a positive number or None, got {sigma2!r}")


def nst_loss(student, teacher, kernel="poly", degree=2, coef=0.0, sigma2=None, resize=None):
    """NST loss: squared MMD of the normalised channel maps, per image, averaged over the batch.

    student: [N, C_S, H, W]; teacher: [N, C_T, H, W] (C_S and C_T may differ) -> scalar tensor.
    Each channel map f (H*W positions) becomes s = f / sqrt(||f||^2 + 1e-10); per image
        MMD^2 = 1/C_T^2 sum_ii' k(t_i, t_i') + 1/C_S^2 sum_jj' k(s_j, s_j') - 2/(C_T C_S) sum_ij k(t_i, s_j)
    with k = "linear": x^T y; "poly": (x^T y + coef)^degree; "gaussian": exp(-||x - y||^2 / (2 sigma2)).
    sigma2=None sets, per image, sigma2 = the mean of ||z - z'||^2 over all ordered pairs of the
    pooled maps {t_i} U {s_j} (C_T + C_S of them, self-pairs included), detached, floored at the
    dtype's machine epsilon. No loss weight is applied (NSTLoss does that). The teacher is detached.
    float16/bfloat16 inputs are computed (and returned) in float32, float64 in float64; autocast is
    switched off inside. Different H, W raise ValueError unless resize="to_teacher" (bilinear resize
    of the student to the teacher's H x W) or resize="to_student" (the teacher to the student's).
    """
    check_kernel_args(kernel, degree, coef, sigma2, resize)
    hint = "; pass resize='to_teacher' or resize='to_student' to resize one of them (bilinear)"
    check_feature_pair("nst_loss", student, teacher, same_size=resize is None, hint=hint)
    dtype = torch.promote_types(torch.promote_types(student.dtype, teacher.dtype), torch.float32)
    s, t = student.to(dtype), teacher.detach().to(dtype)
    with torch.autocast(device_type=s.device.type, enabled=False):
        if resize == "to_teacher" and s.shape[-2:] != t.shape[-2:]:
            s = F.interpolate(s, size=t.shape[-2:], mode="bilinear", align_corners=False)
        elif resize == "to_student" and s.shape[-2:] != t.shape[-2:]:
            t = F.interpolate(t, size=s.shape[-2:], mode="bilinear", align_corners=False)
        n, c_s, c_t, hw = s.shape[0], s.shape[1], t.shape[1], s.shape[2] * s.shape[3]
        s, t = s.reshape(n, c_s, hw), t.reshape(n, c_t, hw)
        if kernel == "linear" or (kernel == "poly" and degree == 1):
            mmd2 = _MeanMapMMD.apply(s, t)
        elif kernel == "poly" and degree == 2 and not _channel_gram_is_cheaper(c_s, c_t, hw):
            mmd2 = _spatial_gram_poly2_mmd2(s, t, float(coef))
        else:
            need_grad = torch.is_grad_enabled() and s.requires_grad
            if kernel == "gaussian" and _pairs_outnumber_positions(c_s, c_t, hw):
                mmd2 = _GaussianMMD.apply(s, t, sigma2, need_grad)
            else:
                mmd2 = _ChannelGramMMD.apply(s, t, kernel, degree, float(coef), sigma2, need_grad)
        loss = mmd2.mean()
    check_loss_finite("nst_loss", loss, student=student, teacher=teacher)
    return loss


class NSTLoss(nn.Module):
    """weight * nst_loss(student [N, C_S, H, W], teacher [N, C_T, H, W]) as a module for configs.

    The official code adds lambda * (mean k(s, s') - 2 mean k(s, t)) with lambda = 50 (poly kernel);
    the teacher-teacher term is constant for the student, so weight=50 gives the same gradients.
    The paper writes (lambda / 2) * MMD^2, i.e. weight = lambda / 2.
    """

    def __init__(self, weight=1.0, kernel="poly", degree=2, coef=0.0, sigma2=None, resize=None):
        super().__init__()
        check_kernel_args(kernel, degree, coef, sigma2, resize)
        self.weight = float(weight)
        self.kernel, self.degree, self.coef, self.sigma2, self.resize = kernel, degree, coef, sigma2, resize

    def forward(self, student, teacher):
        """student [N, C_S, H, W], teacher [N, C_T, H, W] -> weighted scalar loss."""
        loss = nst_loss(student, teacher, self.kernel, self.degree, self.coef, self.sigma2, self.resize)
        return self.weight * loss

    def extra_repr(self):
        return (
            f"weight={self.weight}, kernel={self.kernel!r}, degree={self.degree}, coef={self.coef}, "
            f"sigma2={self.sigma2}, resize={self.resize!r}"
        )
